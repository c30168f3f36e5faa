"""benchmarks/minilm_distill.py: the variant grammar is checked, and every loss term is zero for a student equal to
its teacher and positive (with a gradient) for a perturbed one."""
import copy
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from minilm_distill import loss_of, parse_variant  # noqa: E402


def test_variants_are_parsed_and_bad_ones_refused():
    assert parse_variant("a:cos+sim:3e-5:train+bible") == ("a", ("cos", "sim"), 3e-5, ("train", "bible"))
    assert parse_variant("b:mse+cos:1e-4:train+pydoc+stdpkg+crops")[3] == ("train", "pydoc", "stdpkg", "crops")
    for bad in ("a:cos:1e-4", "a:kl:1e-4:train", "a:cos:1e-4:wiki", "a:cos:1e-4:crops"):
        with pytest.raises(ValueError, match="variant|NAME:LOSS:LR:DATA"):
            parse_variant(bad)


@pytest.mark.parametrize("terms", [("cos",), ("mse",), ("sim",), ("hidden",), ("cos", "mse", "sim", "hidden")])
def test_each_loss_is_zero_at_the_teacher_and_positive_away_from_it(terms):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    teacher = transformers.BertModel(cfg).eval()
    batch = {"input_ids": torch.randint(1, 50, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long)}
    batch["attention_mask"][0, 5:] = 0
    assert loss_of(terms, copy.deepcopy(teacher), teacher, batch).item() == pytest.approx(0.0, abs=1e-6)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.encoder.layer[0].intermediate.dense.weight.add_(0.5 * torch.randn(32, 16))
    loss = loss_of(terms, student, teacher, batch)
    loss.backward()
    assert loss.item() > 1e-5 and student.encoder.layer[0].intermediate.dense.weight.grad.abs().sum() > 0
