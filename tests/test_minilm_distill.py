"""benchmarks/minilm_distill.py: the variant grammar is checked, and every loss term is zero for a student equal to
its teacher and positive (with a gradient) for a perturbed one."""
import copy
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from minilm_distill import BANK_TEMPERATURE, bank_kl, bank_metric, loss_of, parse_variant, word_swaps  # noqa: E402


def test_variants_are_parsed_and_bad_ones_refused():
    assert parse_variant("a:cos+sim:3e-5:train+bible") == ("a", {"cos": 1.0, "sim": 1.0}, 3e-5, ("train", "bible"))
    assert parse_variant("b:mse+cos:1e-4:train+pydoc+stdpkg+crops")[3] == ("train", "pydoc", "stdpkg", "crops")
    assert parse_variant("c:mse+cos+bank*0.1:1e-4:train")[1] == {"mse": 1.0, "cos": 1.0, "bank": 0.1}
    assert parse_variant("d:cos:1e-4:train+swaps")[3] == ("train", "swaps")
    for bad in ("a:cos:1e-4", "a:kl:1e-4:train", "a:cos:1e-4:wiki", "a:cos:1e-4:crops", "a:cos*x:1e-4:train",
                "a:cos:1e-4:swaps", "a:cos:1e-4:crops+swaps",
                "a:cos*0:1e-4:train", "a:cos*-1:1e-4:train"):
        with pytest.raises(ValueError, match="variant|NAME:LOSS:LR:DATA"):
            parse_variant(bad)


def test_word_swaps_replace_a_seeded_share_of_words_with_corpus_words():
    sentences = ["the quick brown fox jumps over the lazy dog today", "a list holds items in order",
                 "one two"]
    swapped = word_swaps(sentences, copies=3, seed=1, rate=0.3)
    assert len(swapped) == 9 and swapped == word_swaps(sentences, copies=3, seed=1, rate=0.3)
    assert swapped != word_swaps(sentences, copies=3, seed=2, rate=0.3)
    vocabulary = {w for s in sentences for w in s.split()}
    changed = 0
    for i, new in enumerate(swapped):
        old, new = sentences[i // 3].split(), new.split()
        assert len(new) == len(old) and set(new) <= vocabulary
        differ = sum(a != b for a, b in zip(old, new))
        assert differ <= max(1, round(0.3 * len(old)))  # only the drawn positions change
        changed += differ
    assert changed >= 9 * 0.5  # most draws pick another word (a draw may return the word it replaces)
    with pytest.raises(ValueError, match="at least 1 word"):
        word_swaps(["a list", "  "])


def test_bank_kl_matches_a_direct_sum_and_masks_each_sentences_own_row():
    torch.manual_seed(0)
    t, s = (torch.nn.functional.normalize(torch.randn(3, 8), dim=-1) for _ in range(2))
    bank = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    own = torch.tensor([2, -1, 0])
    expected = 0.0
    for i in range(3):
        keep = [j for j in range(5) if j != own[i]]
        p = torch.softmax(t[i] @ bank[keep].T / BANK_TEMPERATURE, -1)
        q = torch.softmax(s[i] @ bank[keep].T / BANK_TEMPERATURE, -1)
        expected += float((p * (p / q).log()).sum()) / 3
    assert bank_kl(t, s, bank, own).item() == pytest.approx(expected, rel=1e-5)
    assert bank_kl(t, t, bank, own).item() == pytest.approx(0.0, abs=1e-6)
    first = bank_kl(t[:1], s[:1], bank, own[:1]).item()
    bank[2] = t[0]  # its own row (the sentence itself) must not count, however close
    assert bank_kl(t[:1], s[:1], bank, own[:1]).item() == pytest.approx(first, rel=1e-6)


def test_cov_metric_is_the_spread_of_similarity_changes_over_the_bank():
    torch.manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(50, 6) * torch.tensor([3.0, 2, 1, 1, 0.5, 0.1]), dim=-1)
    metric = bank_metric(bank)
    assert metric.trace().item() == pytest.approx(6.0, rel=1e-5)
    e = torch.randn(6)
    spread = (bank @ e).var(unbiased=False)  # how much the similarities to the bank's rows move, across the rows
    total_variance = (bank - bank.mean(0)).pow(2).sum(1).mean()
    assert (e @ metric @ e).item() == pytest.approx((spread * 6 / total_variance).item(), rel=1e-4)


@pytest.mark.parametrize("terms", [("cos",), ("mse",), ("sim",), ("hidden",), ("bank",), ("cov",),
                                   ("cos", "mse", "sim", "hidden", "bank", "cov")])
def test_each_loss_is_zero_at_the_teacher_and_positive_away_from_it(terms):
    torch.manual_seed(0)
    terms = dict.fromkeys(terms, 1.0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    teacher = transformers.BertModel(cfg).eval()
    batch = {"input_ids": torch.randint(1, 50, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long)}
    batch["attention_mask"][0, 5:] = 0
    bank, own = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1), torch.tensor([0, -1, 3, 5])
    extra = (bank, own, bank_metric(bank))
    assert loss_of(terms, copy.deepcopy(teacher), teacher, batch, *extra).item() == pytest.approx(0.0, abs=1e-6)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.encoder.layer[0].intermediate.dense.weight.add_(0.5 * torch.randn(32, 16))
    loss = loss_of(terms, student, teacher, batch, *extra)
    loss.backward()
    assert loss.item() > 1e-5 and student.encoder.layer[0].intermediate.dense.weight.grad.abs().sum() > 0
