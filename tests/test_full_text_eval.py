"""The whole-text scorer: chunked loss equals one pass over every window and a hand count, scores are cached by
key (a second run does not score again), and a folder compressed from a base is scored against that base."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import full_text_eval  # noqa: E402
from full_text_eval import whole_text_loss  # noqa: E402

from lors.compression.pretrained import cached_json  # noqa: E402


def test_chunked_whole_text_loss_is_the_mean_over_every_target():
    from test_llm_compress import tiny_llama

    model = tiny_llama(layers=2)
    windows = torch.randint(0, 96, (7, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
    by_hand = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    lines = []
    score = whole_text_loss(model, windows, chunk=3, batch_size=2, log=lines.append)
    assert score["targets"] == 7 * 11 and score["windows"] == 7
    assert score["loss"] == pytest.approx(by_hand, rel=1e-5) and score["ppl"] == pytest.approx(math.exp(by_hand))
    assert len(lines) == 3 and lines[-1].lstrip().startswith("7/7 windows")  # one progress line per chunk


def test_cached_json_is_reused_per_key(tmp_path):
    calls = []

    def score():
        calls.append(1)
        return {"ppl": float(len(calls))}

    cache = tmp_path / "sub" / "cache.json"
    assert cached_json(cache, {"model": "a"}, score) == {"ppl": 1.0}
    assert cached_json(cache, {"model": "a"}, score) == {"ppl": 1.0} and len(calls) == 1
    assert cached_json(cache, {"model": "b"}, score) == {"ppl": 2.0} and len(calls) == 2
    assert [e["key"] for e in json.loads(cache.read_text())] == [{"model": "a"}, {"model": "b"}]


def test_script_scores_base_and_folder_once(tmp_path, monkeypatch, capsys):
    from test_llm_compress import tiny_llama_folder

    import lors
    from lors.compression.pretrained import load_causal_lm

    base_folder, small = tiny_llama_folder(tmp_path), tmp_path / "small"
    base, tokenizer = load_causal_lm(str(base_folder), progress=False)
    calib = torch.randint(0, base.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    compressed, _ = lors.compress(base, calib, lors.CompressConfig.fast(budget=0.5))
    lors.save_pretrained(compressed, small, tokenizer=tokenizer)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"The {w} of line {i} is here." for i, w in enumerate(["value", "name", "type"] * 40)))
    monkeypatch.setenv("LORS_CACHE", str(tmp_path / "cache"))
    argv = ["full_text_eval.py", str(small), "--base", str(base_folder), "--texts", str(text), "--window", "16"]
    monkeypatch.setattr(sys, "argv", argv)
    full_text_eval.main()
    first = capsys.readouterr().out
    assert "windows, running ppl" in first
    table = [line for line in first.splitlines() if line.startswith((str(base_folder), str(small)))]
    assert len(table) == 2 and "(x1.000)" in table[0] and "(x1.000)" not in table[1]
    stored = json.loads((small / "full_text.json").read_text())
    assert len(stored) == 1 and stored[0]["key"]["window"] == "16"
    full_text_eval.main()  # every score cached: nothing is scored again
    second = capsys.readouterr().out
    assert "running ppl" not in second and [line for line in second.splitlines() if line in table] == table


def test_script_refuses_a_folder_without_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["full_text_eval.py", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a folder written by lors compress"):
        full_text_eval.main()
