"""benchmarks/recall_vs_cosine.py: the noise hits the asked mean cosine, moves every row by the same angle, and the
inverse (the cosine isotropic noise needs for a recall) lands back on the cosine that gave that recall."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from recall_vs_cosine import cosine_for_recall, noisy  # noqa: E402

from lors.compression.evaluate import embedding_agreement  # noqa: E402


def test_noise_reaches_the_target_cosine_on_every_row():
    reference = F.normalize(torch.randn(300, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    for target in (0.8, 0.95, 0.99):
        moved = noisy(reference, target)
        assert torch.allclose(moved.norm(dim=-1), torch.ones(300), atol=1e-5)
        assert torch.allclose((moved * reference).sum(-1), torch.full((300,), target), atol=1e-5)
    assert torch.equal(noisy(reference, 0.9, seed=3), noisy(reference, 0.9, seed=3))


def test_cosine_for_recall_inverts_the_noise_curve():
    reference = F.normalize(torch.randn(300, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    recall = embedding_agreement(reference, noisy(reference, 0.9))["recall@10"]
    assert 0 < recall < 100
    assert cosine_for_recall(reference, recall) == pytest.approx(0.9, abs=0.01)
    assert cosine_for_recall(reference, recall - 10) < cosine_for_recall(reference, recall)
