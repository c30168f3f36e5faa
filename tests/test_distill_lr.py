"""benchmarks/distill_lr.py: distils a saved compressed folder toward its base with the given learning rate, scores
it before and after on the same windows, and refuses a non-positive lr."""
import json
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import distill_lr  # noqa: E402


def test_distilling_a_saved_folder_moves_it_toward_the_base(tmp_path, monkeypatch):
    from test_llm_compress import tiny_llama_folder

    import lors
    from lors.compression.pretrained import load_causal_lm

    monkeypatch.setenv("LORS_CACHE", str(tmp_path / "cache"))
    base, tokenizer = load_causal_lm(str(tiny_llama_folder(tmp_path)), progress=False)
    with torch.no_grad():  # a random tiny model predicts nearly uniformly: give it sharp outputs to lose and regain
        for p in base.parameters():
            p.mul_(8.0 if p.ndim == 2 else 1.0)
    base_folder, small = tmp_path / "sharp", tmp_path / "small"
    base.save_pretrained(base_folder)
    tokenizer.save_pretrained(base_folder)
    calib = torch.randint(0, base.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    cfg = lors.CompressConfig.fast(budget=0.3, window=16)
    compressed, _ = lors.compress(base, calib, cfg)
    lors.save_pretrained(compressed, small, tokenizer=tokenizer, config=cfg.resolve("lm"))
    out = tmp_path / "out"
    result = distill_lr.main([str(small), "--base", str(base_folder), "--lr", "3e-3", "--steps", "6",
                              "--eval-windows", "4", "--out", str(out)])
    assert json.loads((out / "results.json").read_text())["after"] == result["after"]
    assert [h["step"] for h in result["history"]] == [6] and result["lr"] == 3e-3
    for text in ("pydoc", "bible"):  # KL to the base falls, and the ratio is the after-perplexity's
        assert result["after"][f"kl_{text}"] < result["before"][f"kl_{text}"]
        assert result["ratios_after"][text] == pytest.approx(result["after"][f"ppl_{text}"] / result["original"][text],
                                                             abs=1e-3)


def test_refuses_a_non_positive_lr_and_a_folder_without_a_recipe(tmp_path, capsys):
    with pytest.raises(SystemExit):
        distill_lr.main([str(tmp_path), "--lr", "0", "--out", str(tmp_path / "o")])
    assert "--steps and --lr must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        distill_lr.main([str(tmp_path), "--lr", "1e-4", "--out", str(tmp_path / "o")])
    assert "no lors.json with a compress_config" in capsys.readouterr().err
