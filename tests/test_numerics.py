"""Calibration numerics that must not fail: dead and constant input features, rank-deficient moments, float32
inputs with outliers (no error, no NaN, never worse than the plain SVD of the same rank), and padding-free
moments (a padded batch gives the moments of its unpadded rows)."""
import copy

import pytest
import torch

import lors
from lors.apply.budget import stack_linears
from lors.apply.calibration import input_moments, scaled_product
from lors.apply.lct import rebuild
from lors.apply.sequential import corrected_target, sequential_refit
from lors.nn.pivoted import PivotedLowRankLinear
from lors.nn.spectral import output_error

transformers = pytest.importorskip("transformers")


def inputs(kind: str, n: int = 400, d: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2, d, dtype=torch.float64)
    if kind == "dead":
        x[:, 5:11] = 0
    elif kind == "constant":
        x[:, 3] = 7.0
        x[:, 4] = -2.0
    elif kind == "rank_deficient":
        x = x[:8]                                   # 8 samples of 24 features: C has rank 8
    elif kind == "outliers":
        x[:, 2] *= 1e4                              # an outlier feature (LLMs' massive activations)
        x[::50] *= 1e3                              # and outlier tokens
    return x


@pytest.mark.parametrize("kind", ["dead", "constant", "rank_deficient", "outliers"])
def test_whitened_fit_is_finite_and_never_worse_than_plain_svd(kind):
    x = inputs(kind)
    W = torch.randn(16, x.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = x.T @ x / len(x)                               # float64 moments: the truth
    measured = scaled_product(x.float()) / len(x)          # as calibration measures float32 inputs
    assert torch.isfinite(measured).all()
    scale = exact.diagonal().clamp_min(1e-30).sqrt()
    assert ((measured - exact).abs() / (scale[:, None] * scale[None, :])).max() < 1e-5
    for rank in (2, 6, 12):
        whitened = lors.LowRankLinear.from_weight(W.float(), rank=rank, input_moment=measured)
        plain = lors.LowRankLinear.from_weight(W.float(), rank=rank)
        assert torch.isfinite(whitened.U).all() and torch.isfinite(whitened.V).all()
        e_w, e_p = (output_error(W, m.weight.double(), exact) for m in (whitened, plain))
        assert e_w <= e_p * (1 + 1e-4) + 1e-7, (kind, rank, e_w, e_p)
        pivoted = PivotedLowRankLinear.from_lowrank(whitened)  # LU on rank-deficient factors must not fail
        z = x[:5].float()
        assert torch.isfinite(pivoted.V).all()
        torch.testing.assert_close(pivoted(z), whitened(z), atol=1e-3 * whitened(z).abs().max().item(), rtol=1e-3)
    # the sequential correction solves with these moments too
    T = corrected_target(W, measured + 0.01 * torch.eye(len(W.T), dtype=torch.float64), measured)
    assert torch.isfinite(T).all()


def test_pivoted_layer_from_factors_of_lower_rank_than_stored():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(4, 12, generator=g, dtype=torch.float64)
    B[2:] = 0  # a rank-2 product stored at rank 4: the old pivot choice divided by a singular block
    layer = PivotedLowRankLinear.from_factors(A, B)
    torch.testing.assert_close(layer.weight, A @ B, atol=1e-12, rtol=0)


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_padded_batch_gives_the_moments_and_the_refit_of_its_unpadded_rows():
    model = tiny_llama()
    container, targets, paths = stack_linears(model)
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(1, 96, (1, 12), generator=g), torch.randint(1, 96, (1, 7), generator=g)
    padded = torch.zeros(2, 12, dtype=torch.long)
    padded[0], padded[1, :7] = a[0], b[0]
    mask = (torch.arange(12) < torch.tensor([[12], [7]])).long()
    batch = [{"input_ids": padded, "attention_mask": mask, "use_cache": False}]
    unpadded = [{"input_ids": a, "use_cache": False}, {"input_ids": b, "use_cache": False}]
    m_pad, m_rows = input_moments(model, paths, batch), input_moments(model, paths, unpadded)
    for p in paths:
        torch.testing.assert_close(m_pad[p], m_rows[p], atol=1e-6, rtol=1e-5)
    with_pads = input_moments(model, paths, [{"input_ids": padded, "use_cache": False}])
    assert not torch.allclose(with_pads[paths[0]], m_rows[paths[0]], atol=1e-4)  # the padding would count
    ranks = {p: 6 for p in paths}
    refits = []
    for calib in (batch, unpadded):
        student = rebuild(copy.deepcopy(model), ranks, calibration=m_rows)
        sequential_refit(student, model, container, targets, calib)
        refits.append(lors.merge(student).state_dict())
    for k in refits[0]:
        torch.testing.assert_close(refits[0][k], refits[1][k], atol=1e-4, rtol=1e-4)
