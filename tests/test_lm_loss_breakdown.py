"""benchmarks/lm_loss_breakdown.py: the sums match a direct computation, vanish for a model equal to the original,
the top-k part is the whole KL when k is the vocabulary, and code lines are told from prose."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lm_loss_breakdown import add, breakdown, code_positions  # noqa: E402


def _logprobs(n, v, seed):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)).mul(2).log_softmax(-1)


def test_breakdown_matches_direct_sums():
    p, q = _logprobs(40, 12, 0), _logprobs(40, 12, 1)
    targets = torch.randint(0, 12, (40,), generator=torch.Generator().manual_seed(2))
    code = torch.arange(40) % 3 == 0
    out = breakdown(p, q, targets, code, ks=(3, 12))
    kl = [float(sum(p[i].exp()[j] * (p[i, j] - q[i, j]) for j in range(12))) for i in range(40)]
    assert out["kl"] == pytest.approx(sum(kl), rel=1e-5)
    assert out["kl_code"] == pytest.approx(sum(kl[i] for i in range(40) if code[i]), rel=1e-5)
    assert out["code_tokens"] == 14 and out["tokens"] == 40
    extra = [float(p[i, targets[i]] - q[i, targets[i]]) for i in range(40)]
    assert out["extra_nll"] == pytest.approx(sum(extra), rel=1e-5, abs=1e-5)
    top3 = p.topk(3, -1).indices
    outside = [i for i in range(40) if targets[i] not in top3[i]]
    assert out["topk"][3]["targets_outside"] == len(outside)
    assert out["topk"][3]["extra_nll_outside"] == pytest.approx(sum(extra[i] for i in outside), rel=1e-5, abs=1e-5)
    assert out["topk"][12]["kl"] == pytest.approx(out["kl"], rel=1e-4)  # k = vocabulary: the whole KL
    assert out["topk"][12]["targets_outside"] == 0
    assert 0 < out["topk"][3]["kl"] < out["kl"]  # a bucket hides the tail's shape: it sees less
    same = breakdown(p, p.clone(), targets, code, ks=(3,))
    assert same["kl"] == pytest.approx(0, abs=1e-6) and same["topk"][3]["kl"] == pytest.approx(0, abs=1e-6)
    twice = add(add({}, out), out)
    assert twice["kl"] == pytest.approx(2 * out["kl"]) and twice["topk"][3]["targets_outside"] == 2 * len(outside)


class _Pieces:
    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids.tolist())


def test_code_positions_follow_the_line_each_token_is_on():
    tokenizer = _Pieces(["Use", " it", ":\n", "   ", ">>>", " f", "()", "\n", "Then", "\t", "x"])
    flags = code_positions(tokenizer, torch.arange(11))
    assert flags.tolist() == [False, False, False, True, True, True, True, False, False, False, False]
