import pytest
import torch

from lors import LorsLinearStack, LowRankLinear, static_lors_params
from lors.apply.lct import lct, lct_ranks
from lors.models.vit import BLOCK_LINEARS, VisionTransformer

TINY = dict(img_size=8, patch_size=4, in_chans=1, num_classes=5, dim=16, depth=3, heads=2, mlp_dim=32)


@pytest.mark.parametrize("variant,extra", [("dense", {}), ("lors", dict(rank=2, attn_groups=[1, 1, 2])),
                                           ("lct", dict(lct_rank=4))])
def test_forward_and_every_parameter_gets_a_gradient(variant, extra):
    torch.manual_seed(0)
    m = VisionTransformer(**TINY, variant=variant, **extra)
    if variant == "lors":  # B starts at zero; make residuals non-trivial so every factor gets gradient
        with torch.no_grad():
            for s in m.stacks.values():
                for b in s.B:
                    b.normal_(std=0.1)
    y = m(torch.randn(3, 1, 8, 8))
    assert y.shape == (3, 5) and torch.isfinite(y).all()
    y.square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_lors_blocks_share_once_and_count_matches_closed_form():
    m = VisionTransformer(**TINY, variant="lors", rank=2, attn_groups=[1, 1, 2], mlp_groups=[2, 1, 1])
    keys = list(m.state_dict())
    assert keys.count("stacks.qkv.shared_weight") == 1
    assert not any(k.startswith("blocks.") and ("qkv" in k or "fc1" in k) for k in keys)
    d, h = 16, 32
    expected_stacks = (static_lors_params(3, d, 3 * d, 2, [1, 1, 2]) + static_lors_params(3, d, d, 2, [1, 1, 2])
                       + static_lors_params(3, d, h, 2, [2, 1, 1]) + static_lors_params(3, h, d, 2, [2, 1, 1]))
    norms = 3 * 2 * 2 * d
    assert m.block_parameter_count() == expected_stacks + norms
    assert isinstance(m.stacks["fc2"], LorsLinearStack)


def test_lors_at_init_equals_a_weight_tied_dense_model():
    torch.manual_seed(0)
    lors_model = VisionTransformer(**TINY, variant="lors", rank=2)
    dense_model = VisionTransformer(**TINY, variant="dense")
    state = {k: v for k, v in lors_model.state_dict().items() if not k.startswith("stacks.")}
    for i in range(3):
        for kind, path in [("qkv", "attn.qkv"), ("proj", "attn.proj"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")]:
            state[f"blocks.{i}.{path}.weight"] = lors_model.stacks[kind].weight(i)
            state[f"blocks.{i}.{path}.bias"] = lors_model.stacks[kind].bias[i]
    dense_model.load_state_dict(state)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(dense_model(x), lors_model(x), atol=1e-6)


def test_lct_function_on_vit_full_rank_is_exact_and_reports_ranks():
    torch.manual_seed(0)
    m = VisionTransformer(**TINY, variant="dense")
    x = torch.randn(2, 1, 8, 8)
    before = m(x)
    lct(m, rank=16, targets=BLOCK_LINEARS, skip_if_larger=False)
    ranks = lct_ranks(m)
    assert len(ranks) == 12 and set(ranks.values()) == {16}
    assert isinstance(m.blocks[0].mlp.fc2, LowRankLinear) and not isinstance(m.head, LowRankLinear)
    assert torch.allclose(m(x), before, atol=1e-5)


def test_lct_errors():
    m = VisionTransformer(**TINY)
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        lct(m, rank=2, targets=r"encoder\..*")
    with pytest.raises(ValueError, match="exactly one"):
        lct(m, rank=2, epsilon=0.1)


@pytest.mark.parametrize("kw,field", [(dict(variant="big"), "variant"), (dict(variant="lct"), "lct_rank"),
                                      (dict(variant="lors", attn_groups=[1, 1]), "attn_groups"),
                                      (dict(img_size=9), "img_size")])
def test_model_errors(kw, field):
    args = dict(TINY)
    args.update(kw)
    with pytest.raises(ValueError, match=field):
        VisionTransformer(**args)


def test_lct_leaves_layers_dense_when_factoring_would_grow_them():
    m = VisionTransformer(**TINY)
    lct(m, rank=8, targets=BLOCK_LINEARS)
    assert isinstance(m.blocks[0].attn.proj, torch.nn.Linear)  # 16x16 at rank 8: 8*32 = 256 = 16*16, no saving
    assert isinstance(m.blocks[0].attn.qkv, LowRankLinear)  # 16->48 at rank 8: 8*64 = 512 < 768
    assert "blocks.0.attn.proj" not in lct_ranks(m) and lct_ranks(m)["blocks.0.attn.qkv"] == 8
