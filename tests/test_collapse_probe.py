"""The collapse probe restores exactly the parts it names: attention and MLP split every linear of the stack, the
thirds cover every block once, and restoring everything gives back the original model."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from collapse_probe import probes, restored  # noqa: E402

import lors  # noqa: E402
from lors.apply.budget import stack_linears  # noqa: E402


def test_probes_partition_the_stack_and_restoring_everything_is_the_original():
    from test_llm_compress import tiny_llama

    original = tiny_llama(layers=4)
    container, targets, full = stack_linears(original)
    p = probes(container, targets, 4, per_block=True)
    attention, mlp = p["attention restored (every block)"], p["MLP restored (every block)"]
    assert sorted(attention + mlp) == sorted(full) and not set(attention) & set(mlp)
    assert all(".self_attn." in a for a in attention) and all(".mlp." in m for m in mlp)
    thirds = [v for k, v in p.items() if k.startswith("blocks ")]
    assert [k for k in p if k.startswith("blocks ")] == ["blocks 0-1 restored", "blocks 2-3 restored"]
    assert sorted(sum(thirds, [])) == sorted(full) == sorted(sum((p[f"block {i} restored"] for i in range(4)), []))
    compressed, _ = lors.compress(original, torch.randint(0, 64, (4, 8)), lors.CompressConfig.fast(budget=0.4))
    x = torch.randint(0, 64, (1, 8))
    assert not torch.allclose(compressed(x).logits, original(x).logits, atol=1e-3)
    back = restored(compressed, original, full)
    torch.testing.assert_close(back(x).logits, original(x).logits)
    partly = restored(compressed, original, attention)
    assert type(partly.get_submodule(mlp[0])) is type(compressed.get_submodule(mlp[0]))  # the copy, untouched
    assert type(compressed.get_submodule(attention[0])) is not torch.nn.Linear  # the compressed model unchanged


def test_probes_find_attention_under_bert_names():
    targets = ["attention.self.query", "attention.self.value", "attention.output.dense", "intermediate.dense",
               "output.dense"]
    p = probes("encoder.layer", targets, 2, per_block=False)
    assert p["attention restored (every block)"] == [f"encoder.layer.{i}.{t}" for i in range(2) for t in targets[:3]]
    assert p["MLP restored (every block)"] == [f"encoder.layer.{i}.{t}" for i in range(2) for t in targets[3:]]
