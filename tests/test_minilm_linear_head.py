"""benchmarks/minilm_linear_head.py: the ridge map recovers an exact linear distortion, shrinks to the identity as
the ridge grows, and minimises its objective (the gradient vanishes there)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from minilm_linear_head import fit_map  # noqa: E402


def test_the_map_recovers_a_linear_distortion_and_shrinks_to_the_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g, dtype=torch.float64)
    a = torch.eye(16, dtype=torch.float64) + 0.3 * torch.randn(16, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(fit_map(x, x @ a, 1e-12), a, atol=1e-8)
    assert torch.allclose(fit_map(x, x @ a, 1e9), torch.eye(16, dtype=torch.float64), atol=1e-6)
    y = x @ a + 0.5 * torch.randn(500, 16, generator=g, dtype=torch.float64)
    w = fit_map(x, y, 0.3).requires_grad_()
    loss = (x @ w - y).pow(2).sum() + 0.3 * 500 / 16 * (w - torch.eye(16, dtype=torch.float64)).pow(2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-8
