"""``lors distill`` / ``lors.compression.run_distill``: a saved compressed folder distilled further toward its base,
scored before and after as ``lors compress`` scores, saved as a new folder that records the chain; bad flags refused."""
import json

import pytest
import torch

import lors
from lors.compression.config import LM_DISTILL_LR
from lors.engine.trainer import native_bf16

transformers = pytest.importorskip("transformers")


def sharp_llama_folder(tmp_path, name="sharp", seed=0):
    """A tiny Llama folder whose outputs are far from uniform (a random tiny model predicts nearly uniformly: nothing
    to lose by compression or regain by distillation)."""
    from lors.compression.pretrained import load_causal_lm
    from test_llm_compress import tiny_llama_folder

    base, tokenizer = load_causal_lm(str(tiny_llama_folder(tmp_path / f"tiny{seed}")), progress=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in base.parameters():
            p.mul_(8.0 if p.ndim == 2 else 1.0).add_(0.05 * torch.randn_like(p) if seed else 0.0)
    folder = tmp_path / name
    base.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, base, tokenizer


def compressed_folder(tmp_path, base_folder, base, tokenizer, source=True):
    from lors.compression.pretrained import base_source

    calib = torch.randint(0, base.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    cfg = lors.CompressConfig.fast(budget=0.3, window=16)
    small, _ = lors.compress(base, calib, cfg)
    out = tmp_path / ("small" if source else "anonymous")
    lors.save_pretrained(small, out, tokenizer, cfg.resolve("lm"), base_source(str(base_folder)) if source else None)
    return out


def test_distilling_a_saved_folder_moves_it_toward_the_base_and_records_the_chain(tmp_path, capsys, monkeypatch):
    from lors.cli.main import main

    monkeypatch.setenv("LORS_CACHE", str(tmp_path / "cache"))
    base_folder, base, tokenizer = sharp_llama_folder(tmp_path)
    small = compressed_folder(tmp_path, base_folder, base, tokenizer)
    out, again = tmp_path / "distilled", tmp_path / "again"
    flags = ["--lr", "1e-3", "--precision", "fp32", "--eval-windows", "4", "--eval-prompts", "1", "--no-progress"]
    assert main(["distill", "--model", str(small), "--steps", "6", *flags, "--out", str(out)]) == 0
    assert "tokens/s" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    original, start, after = results["rows"]
    assert [r["model"] for r in results["rows"]] == ["original", "small (as saved)", "+ distillation (6 steps)"]
    assert [h["step"] for h in results["history"]] == [6] and results["start"] == str(small)
    for text in ("pydoc", "bible"):  # the student moves toward the base on the held-out windows of both texts
        assert after[f"kl_{text}"] < start[f"kl_{text}"]
        assert "kl_" + text not in original and original[f"ppl_{text}"] > 1
    assert start["linear_params"] == after["linear_params"] and start["fraction"] < 0.31  # same structure, same size
    assert len(results["samples"]) == 3 and all(len(v) == 6 for v in results["samples"].values())  # 4 fixed + 1 a text
    # the new folder is the distilled model: it reloads alone, differs from the start, and records where it came from
    start_model, distilled = lors.from_pretrained(small), lors.from_pretrained(out)
    x = torch.randint(0, base.config.vocab_size, (1, 12))
    assert not torch.allclose(start_model(x).logits, distilled(x).logits)
    meta = json.loads((out / "lors.json").read_text())
    assert meta["compress_config"]["distill_steps"] == 6 and meta["compress_config"]["lr"] == 1e-3
    first = meta["source"]["distillations"]
    assert [(d["from"], d["steps"], d["lr"]) for d in first] == [(str(small.resolve()), 6, 1e-3)]
    assert meta["source"]["sha256"] == json.loads((small / "lors.json").read_text())["source"]["sha256"]
    # a distilled folder distils again: the chain grows, the defaults (LM lr LM_DISTILL_LR, cached top-k) apply
    assert main(["distill", "--model", str(out), "--steps", "2", "--topk", "8", "--eval-windows", "2",
                 "--eval-prompts", "0", "--no-progress", "--out", str(again)]) == 0
    chain = json.loads((again / "lors.json").read_text())["source"]["distillations"]
    native = "bf16-mixed" if native_bf16("cpu") else "fp32"  # the LM default where the CPU multiplies bfloat16
    assert [(d["steps"], d["lr"], d["topk"], d["precision"]) for d in chain] == [(6, 1e-3, None, "fp32"),
                                                                                 (2, LM_DISTILL_LR, 8, native)]
    assert json.loads((again / "results.json").read_text())["rows"][1]["model"] == "distilled (as saved)"


def test_distill_refuses_bad_flags_and_a_foreign_base(tmp_path, capsys, monkeypatch):
    from lors.cli.main import main
    from lors.compression import run_distill

    monkeypatch.setenv("LORS_CACHE", str(tmp_path / "cache"))
    base_folder, base, tokenizer = sharp_llama_folder(tmp_path)
    small = compressed_folder(tmp_path, base_folder, base, tokenizer)
    other, _, _ = sharp_llama_folder(tmp_path, "other", seed=1)
    for flags, named in ((["--steps", "0"], "--steps must be >= 1"),
                         (["--steps", "2", "--topk", "0"], "--topk"),
                         (["--steps", "2", "--lr", "0"], "--lr"),
                         (["--steps", "2", "--eval-sentences", "64"], "--eval-sentences"),
                         (["--steps", "2", "--eval-windows", "none"], "--eval-windows"),
                         (["--steps", "2", "--out", str(small)], "--out must be a new folder"),
                         (["--steps", "2", "--resume"], "--resume"),
                         (["--steps", "2", "--base", str(other), "--eval-windows", "1"], "is not the model")):
        assert main(["distill", "--model", str(small), *flags, "--no-progress"]) == 2, flags
        assert named in capsys.readouterr().err, flags
    assert main(["distill", "--model", str(tmp_path), "--steps", "2"]) == 2
    assert "not a lors compressed-model folder" in capsys.readouterr().err
    anonymous = compressed_folder(tmp_path, base_folder, base, tokenizer, source=False)
    with pytest.raises(ValueError, match="give base"):
        run_distill(anonymous, 2)
    with pytest.raises(ValueError, match="distill_precision must be one of 'fp32', 'bf16-mixed'"):
        run_distill(small, 2, precision="fp16")


def test_distilling_an_encoder_folder(tmp_path, capsys):
    from lors.cli.main import main
    from test_compress import tiny_bert_folder

    folder, small, out = tiny_bert_folder(tmp_path), tmp_path / "small", tmp_path / "distilled"
    assert main(["compress", "--model", str(folder), "--budget", "0.5", "--fast", "--calibration-sentences", "32",
                 "--eval-sentences", "32", "--out", str(small), "--no-progress"]) == 0
    assert main(["distill", "--model", str(small), "--steps", "3", "--topk", "4"]) == 2  # an LM-only flag
    assert "--topk" in capsys.readouterr().err
    assert main(["distill", "--model", str(small), "--steps", "3", "--eval-sentences", "32", "--out", str(out),
                 "--no-progress"]) == 0
    compressed = json.loads((small / "results.json").read_text())["rows"][1]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["original", "small (as saved)", "+ distillation (3 steps)"]
    assert rows[1]["cos_mean"] == pytest.approx(compressed["cos_mean"], abs=1e-6)  # the same sentences, same model
    assert rows[2]["encoder_params"] == rows[1]["encoder_params"] and rows[2]["cos_mean"] != rows[1]["cos_mean"]
    assert json.loads((out / "lors.json").read_text())["compress_config"]["lr"] == 1e-4  # the encoder default
