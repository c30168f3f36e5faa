import torch
from torch import nn

from lors import LorsLinearStack, count_parameters, parameter_table, report
from conftest import mixing
from lors.cli.paper import ADAMIXER_LORS, DEIT_TINY, mixing_counts, vit_linear_counts


def test_dense_adamixer_mixing_six_stages_matches_paper_figure():
    # LORS paper's AdaMixer: query 256, channels 256, 2 groups x 64 in-points, 128 out-points
    with torch.device("meta"):  # counts only: no memory for 126M parameters
        m = mixing(num_stages=6, dim=256, n_groups=2, in_points=64,
                           out_points=128, variant="dense")
    assert count_parameters(m) == 126_128_640


def test_lors_mixing_matches_closed_form():
    with torch.device("meta"):
        m = mixing(num_stages=6, dim=256, n_groups=2, in_points=64,
                           out_points=128, variant="lors", core_size=16, core_groups=[1, 1, 2, 2, 3, 3],
                           out_rank=8)
    c = mixing_counts(**ADAMIXER_LORS)
    assert count_parameters(m) == c.lors
    assert c.dense == 126_128_640


def test_vit_closed_form_against_built_stacks():
    c = vit_linear_counts(**DEIT_TINY)
    d, mlp = DEIT_TINY["dim"], DEIT_TINY["mlp"]
    with torch.device("meta"):
        stacks = [LorsLinearStack(12, d, 3 * d, 32, DEIT_TINY["attn_groups"]),
                  LorsLinearStack(12, d, d, 32, DEIT_TINY["attn_groups"]),
                  LorsLinearStack(12, d, mlp, 32, DEIT_TINY["mlp_groups"]),
                  LorsLinearStack(12, mlp, d, 32, DEIT_TINY["mlp_groups"])]
        dense = [nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, mlp), nn.Linear(mlp, d)]
    assert sum(count_parameters(s) for s in stacks) == c.lors
    assert 12 * sum(count_parameters(l) for l in dense) == c.dense


def test_shared_tensor_counted_once_and_table():
    s = LorsLinearStack(3, 4, 5, rank=1)
    model = nn.Module()
    model.stack = s
    model.head = nn.Linear(5, 2)
    model.tied = nn.Linear(5, 2)
    model.tied.weight = model.head.weight  # a tied weight is one tensor
    expected = 5 * 4 + 3 * 1 * (4 + 5) + 3 * 5 + (10 + 2) + 2
    assert count_parameters(model) == expected
    rows = {r.name: r for r in parameter_table(model)}
    assert rows["stack"].shared == 20 and rows["stack"].private == rows["stack"].total - 20
    assert rows["total"].total == expected
    text = report(model)
    assert "shared" in text and f"{expected:,}" in text


def test_trainable_only():
    lin = nn.Linear(3, 3)
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 9
