"""benchmarks/recall_vs_cosine.py: the noise hits the asked mean cosine, moves every row by the same angle, and the
inverse (the cosine isotropic noise needs for a recall) lands back on the cosine that gave that recall."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from recall_vs_cosine import band_scores, cosine_for_recall, noisy  # noqa: E402

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


def test_bands_split_the_error_energy_and_a_band_without_error_scores_perfectly():
    g = torch.Generator().manual_seed(4)
    reference = F.normalize(torch.randn(200, 384, generator=g), dim=-1)
    basis = torch.linalg.qr(torch.randn(384, 384, generator=g))[0].T  # orthonormal rows
    error = 0.05 * torch.randn(200, 384, generator=g)
    error -= error @ basis[:10].T @ basis[:10]  # nothing in the first band
    rows = band_scores(reference, reference + error, basis)
    assert [r["band"] for r in rows] == ["0-10", "10-50", "50-100", "100-200", "200-384"]
    assert sum(r["energy"] for r in rows) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["energy"] < 1e-10 and rows[0]["recall@10"] == 100.0 and rows[0]["cos_mean"] > 0.99999
    assert rows[-1]["energy"] > rows[1]["energy"]  # 184 directions hold more isotropic error than 40
