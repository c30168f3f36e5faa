import json
import subprocess
import sys

from lors.demo import format_rows, summarize

TINY = ["model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=32", "model.patch_size=4",
        "train.epochs=2", "train.progress=false"]


def lors(*args):
    return subprocess.run([sys.executable, "-m", "lors.cli", *args], capture_output=True, text=True)


def test_train_then_eval_reproduces_final_accuracy(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  variant: lors\n  rank: 2\n")
    sets = [a for o in TINY for a in ("--set", o)]
    r = lors("train", str(cfg), *sets, "--output-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    final = json.loads((tmp_path / "run" / "last.json").read_text())["history"][-1]
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3  # header + 2 epochs
    r = lors("eval", str(cfg), *sets, "--checkpoint", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert f"top1={final['top1']:.4f}" in r.stdout


def test_eval_missing_checkpoint_is_a_clear_error(tmp_path):
    r = lors("eval", "--checkpoint", str(tmp_path / "nope"), str(tmp_path / "c.yaml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_demo_tables():
    rows = [{"variant": "dense", "params": 100, "block_params": 80, "top1": 95.0, "epoch_time": 1.0},
            {"variant": "lors", "params": 40, "block_params": 20, "top1": 94.0, "epoch_time": 1.1},
            {"variant": "dense", "params": 100, "block_params": 80, "top1": 97.0, "epoch_time": 1.0},
            {"variant": "lors", "params": 40, "block_params": 20, "top1": 96.0, "epoch_time": 1.1}]
    assert "75.0%" in format_rows(rows[:2])  # (80 - 20) / 80
    table = summarize(rows)
    assert "96.00 +- 1.41" in table and "95.00 +- 1.41" in table
