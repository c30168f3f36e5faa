"""Every user mistake ends in one line `lors: error: ...` naming the file/key, and a non-zero exit."""
import json
import subprocess
import sys

import pytest

from lors.cli.main import main

TINY = ["model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=32", "model.patch_size=4",
        "train.epochs=1", "train.warmup_epochs=0"]


def sets(*extra):
    return [a for o in TINY + list(extra) for a in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    cfg = d / "lors.yaml"
    cfg.write_text("model:\n  variant: lors\n  rank: 2\n")
    assert main(["train", str(cfg), *sets(), "--output-dir", str(d / "run"), "--no-progress"]) == 0
    return cfg, d / "run"


def one_error_line(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("lors: error: "), err
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


def test_bad_config_values(tmp_path, capsys):
    one_error_line(capsys, ["train", "none.yaml"], "config file not found: none.yaml")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  variant: lora\n")
    one_error_line(capsys, ["train", str(cfg)], "model.variant", "'dense', 'lors', 'lct'", "'lora'")
    cfg.write_text("data:\n  dataset: svhn\n")
    one_error_line(capsys, ["train", str(cfg)], "data.dataset", "'mnist'", "'svhn'")
    cfg.write_text("data:\n  dataset: cifar10\n")
    one_error_line(capsys, ["train", str(cfg)], "data.root", "cifar10")
    cfg.write_text("train:\n  shared_lr_scale: sqrt\n")
    one_error_line(capsys, ["count", str(cfg)], "train.shared_lr_scale", "'1/sqrt(N)'")
    cfg.write_text("model:\n  variant: dense\n")
    one_error_line(capsys, ["eval", str(cfg), "--checkpoint", "x", "--per-stage"], "--per-stage", "task: detection")


def test_checkpoint_errors(trained, tmp_path, capsys):
    cfg, run = trained
    tensors = next(run.glob("last-*.safetensors"))
    # a checkpoint made by another config: names the differing setting
    one_error_line(capsys, ["eval", str(cfg), *sets("model.rank=3"), "--checkpoint", str(run)],
                   "model.rank=2 (config: 3)", "shape mismatches")
    # a .safetensors path instead of the checkpoint JSON
    one_error_line(capsys, ["eval", str(cfg), *sets(), "--checkpoint", str(tensors)], tensors.name, ".json")
    # a truncated tensors file names the file
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "last.json").write_text((run / "last.json").read_text())
    (broken / tensors.name).write_bytes(tensors.read_bytes()[:1000])
    one_error_line(capsys, ["eval", str(cfg), *sets(), "--checkpoint", str(broken)], tensors.name, "truncated")
    # a truncated last.json names the file
    (broken / "last.json").write_text((run / "last.json").read_text()[:50])
    one_error_line(capsys, ["eval", str(cfg), *sets(), "--checkpoint", str(broken)], "last.json", "not valid JSON")
    # without CONFIG, eval needs the config inside the checkpoint
    meta = json.loads((run / "last.json").read_text())
    del meta["config"]
    (broken / "last.json").write_text(json.dumps(meta))
    one_error_line(capsys, ["eval", "--checkpoint", str(broken)], "holds no config", "YAML")
    # resuming a finished run says so and succeeds
    assert main(["train", str(cfg), *sets(), "--output-dir", str(run), "--resume", "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_detection_without_extras_stops_before_training(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycocotools" else real(name, *a))
    cfg = tmp_path / "det.yaml"
    cfg.write_text(f"task: detection\ndata:\n  root: {tmp_path}\n")
    one_error_line(capsys, ["train", str(cfg)], "pycocotools", 'pip install -e ".[detection]"')


def test_warnings_for_settings_that_do_nothing(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lct:\n  epsilon: 0.5\n  warmup_epochs: 1\n")
    assert main(["train", str(cfg), *sets("train.warmup_epochs=1"), "--output-dir", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "warning: train.warmup_epochs=1 >= train.epochs=1" in out
    assert "warning: lct.warmup_epochs=1 >= train.epochs=1" in out and "dense" in out
    lr = (tmp_path / "r" / "log.csv").read_text().splitlines()[1].split(",")
    header = (tmp_path / "r" / "log.csv").read_text().splitlines()[0].split(",")
    assert len(lr[header.index("lr")]) <= 12  # rounded, not 0.0030000000000000005


def test_debug_shows_the_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  variant: lora\n")
    quiet = subprocess.run([sys.executable, "-m", "lors.cli", "train", str(cfg)], capture_output=True, text=True)
    assert quiet.returncode == 2 and quiet.stderr.count("\n") == 1 and "Traceback" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "lors.cli", "train", str(cfg), "--debug"], capture_output=True,
                          text=True)
    assert loud.returncode == 2 and "Traceback" in loud.stderr and "model.variant" in loud.stderr


def test_no_progress_bar_redraws_when_output_is_captured(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  progress: true\n")
    r = subprocess.run([sys.executable, "-m", "lors.cli", "train", str(cfg), *sets(), "--output-dir",
                        str(tmp_path / "r")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "it/s" not in r.stderr


def test_count_on_lct_schedule_estimates_the_reduction(capsys):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert main(["count", str(root / "configs/digits_vit_lct.yaml")]) == 0
    out = capsys.readouterr().out
    # 48 block linears of 64 x {192, 64, 128, 64}; epsilon 0.8 keeps at most ceil(64 * 0.36) = 24 singular values
    dense = 12 * (64 * 192 + 192 + 64 * 64 + 64 + 64 * 128 + 128 + 128 * 64 + 64)
    low = 12 * (24 * (64 + 192) + 192 + 24 * 128 + 64 + 24 * 192 + 128 + 24 * 192 + 64)
    assert f"at most {low:,} of their {dense:,} parameters remain" in out
    assert "LCT is scheduled" in out


def test_demo_plot_axis_floor_and_file(tmp_path):
    from lors.cli.demo import plot, y_range

    assert y_range({"dense": 96.0, "lors": 95.5}) == (91.0, 97.5)
    assert y_range({"dense": 96.0, "lors": 80.0}) == (79.0, 97.5)
    rows = [{"variant": v, "top1": 90 + i, "block_params": 1000 * (3 - i) + s,
             "history": [{"epoch": e + 1, "top1": 80 + e + i} for e in range(5)]}
            for s in range(2) for i, v in enumerate(["dense", "lors", "lct"])]
    plot(rows, tmp_path / "p.png", lct_epoch=3)
    assert (tmp_path / "p.png").stat().st_size > 10_000
