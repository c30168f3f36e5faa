import json
import subprocess
import sys
from pathlib import Path

from lors.cli.demo import format_rows, summarize

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


def test_detection_train_checkpoints_and_resume(tmp_path):
    from lors.data.detection import write_shapes

    write_shapes(tmp_path / "shapes", 4, 2, size=64, seed=0)
    cfg = tmp_path / "det.yaml"
    cfg.write_text(f"""task: detection
model: {{backbone_width: 8, feat_channels: 32, num_queries: 5, num_stages: 2, in_points: 4, out_points: 8,
        ffn_dim: 32, decoder: lors, core_size: 2, core_groups: [1, 2]}}
data: {{root: {tmp_path / 'shapes'}, max_size: 64, batch_size: 2}}
train: {{epochs: 1, progress: true}}
""")
    run = tmp_path / "run"
    r = lors("train", str(cfg), "--output-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1" not in r.stderr  # no progress-bar redraws when output is captured
    meta = json.loads((run / "last.json").read_text())
    assert meta["epoch"] == 0 and "AP" in meta["history"][0] and meta["config"]["task"] == "detection"
    r = lors("train", str(cfg), "--set", "train.epochs=2", "--resume", "--output-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    assert [h["epoch"] for h in json.loads((run / "last.json").read_text())["history"]] == [1, 2]
    r = lors("eval", str(cfg), "--checkpoint", str(run))
    assert r.returncode == 0 and "AP50=" in r.stdout, r.stderr
    # --per-stage: one line per decoder stage; the last stage's metrics are the plain eval's
    staged = lors("eval", "--checkpoint", str(run), "--per-stage")  # no CONFIG: the checkpoint's own
    assert staged.returncode == 0, staged.stderr
    lines = [line for line in staged.stdout.splitlines() if line.startswith("stage ")]
    assert [line.split(":")[0] for line in lines] == ["stage 1", "stage 2"]
    assert lines[-1].split(": ", 1)[1] == r.stdout.strip().splitlines()[-1]


def test_detection_count_and_class_mismatch(tmp_path):
    from lors.data.detection import write_shapes

    r = lors("count", str(Path(__file__).resolve().parents[1] / "configs/adamixer_r50_coco_lors.yaml"))
    assert r.returncode == 0 and "decoder lors: 35,348,264" in r.stdout
    write_shapes(tmp_path / "s", 2, 1, size=32)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"task: detection\nmodel: {{num_classes: 80}}\ndata: {{root: {tmp_path / 's'}}}\n")
    r = lors("train", str(cfg))
    assert r.returncode == 2 and "model.num_classes" in r.stderr
