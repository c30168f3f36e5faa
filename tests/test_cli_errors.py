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
    config = str(root / "configs/digits_vit_lct.yaml")
    one_shot = ["--set", "lct.rank=null", "--set", "lct.keep_dense=[]", "--set", "lct.epsilon=0.8"]
    assert main(["count", config] + one_shot) == 0
    out = capsys.readouterr().out
    # 48 block linears of 64 x {192, 64, 128, 64}; epsilon 0.8 keeps at most ceil(64 * 0.36) = 24 singular values
    dense = 12 * (64 * 192 + 192 + 64 * 64 + 64 + 64 * 128 + 128 + 128 * 64 + 64)
    low = 12 * (24 * (64 + 192) + 192 + 24 * 128 + 64 + 24 * 192 + 128 + 24 * 192 + 64)
    assert f"at most {low:,} of their {dense:,} parameters remain" in out
    assert "LCT is scheduled" in out and "the 48 block linears are" in out
    assert main(["count", config]) == 0  # shipped: blocks 0 and 11 dense, the other 10 at rank 6
    out = capsys.readouterr().out
    rank6 = 10 * (6 * (64 + 192) + 192 + 6 * 128 + 64 + 6 * 192 + 128 + 6 * 192 + 64)
    assert f"the 40 block linears (blocks [0, -1] stay dense) are factorised at rank 6: {rank6:,} of their " \
           f"{dense * 10 // 12:,} parameters remain" in out
    assert main(["count", config, "--set", "lct.rank=null", "--set", "lct.switch=stable_rank"]) == 0
    assert "stable ranks" in capsys.readouterr().out
    # a model built factorised with its first and last blocks dense, against the all-dense model
    assert main(["count", config, "--set", "lct.rank=null", "--set", "model.variant=cola", "--set", "model.lct_rank=6",
                 "--set", "model.dense_blocks=[0,-1]"]) == 0
    norms = 12 * 4 * 64
    blocks = dense * 2 // 12 + rank6 + norms
    assert f"variant cola: blocks {blocks:,} vs dense {dense + norms:,}" in capsys.readouterr().out


def test_demo_plot_axis_floor_and_file(tmp_path):
    from lors.cli.demo import plot, y_range

    assert y_range({"dense": 96.0, "lors": 95.5}) == (91.0, 97.5)
    assert y_range({"dense": 96.0, "lors": 80.0}) == (79.0, 97.5)
    rows = [{"variant": v, "top1": 90 + i, "block_params": 1000 * (3 - i) + s,
             "history": [{"epoch": e + 1, "top1": 80 + e + i} for e in range(5)]}
            for s in range(2) for i, v in enumerate(["dense", "lors", "lct"])]
    limits = plot(rows, tmp_path / "p.png", lct_epoch=3)
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert limits["curves"][0] <= 80 and limits["curves"][1] >= 86  # the whole run: every point of every curve
    assert all(box < 0 for box in limits["legend_tops"])  # both legends sit below their axes, off the data


@pytest.mark.parametrize("text,fragment", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- model\n- train\n", "must be a mapping of sections"),
    ("model: [1, 2\n", "is not valid YAML"),
    ("train:\n  lct_epsilon: 0.5\n", "'train.lct_epsilon' is now 'lct.epsilon'"),
    ("train:\n  mixup: 0.8\n", "'train.mixup' is now 'loss.mixup'"),
])
def test_bad_yaml_files_name_the_file(tmp_path, capsys, text, fragment):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    one_error_line(capsys, ["train", str(cfg)], str(cfg), fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override,key", [
    ("train.epochs=-1", "train.epochs"), ("train.epochs=0", "train.epochs"), ("train.lr=0", "train.lr"),
    ("train.warmup_epochs=-2", "train.warmup_epochs"), ("train.max_steps=0", "train.max_steps"),
    ("train.clip_grad=-1", "train.clip_grad"), ("train.weight_decay=-0.1", "train.weight_decay"),
    ("train.factor_lr_scale=0", "train.factor_lr_scale"), ("data.batch_size=0", "data.batch_size"),
    ("data.test_fraction=1.0", "data.test_fraction"), ("data.num_workers=-1", "data.num_workers"),
    ("model.depth=0", "model.depth"), ("model.rank=[2, 0]", "model.rank"), ("model.lct_rank=-3", "model.lct_rank"),
    ("loss.label_smoothing=1.0", "loss.label_smoothing"), ("loss.mixup=-1", "loss.mixup"),
    ("lct.epsilon=1.5", "lct.epsilon"), ("lct.rank=0", "lct.rank"), ("lct.ramp_epochs=-1", "lct.ramp_epochs"),
    ("lct.reproject_every=-5", "lct.reproject_every"), ("lct.reproject_epsilon=0.5", "lct.reproject_epsilon"),
])
def test_out_of_range_counts_and_fractions_are_refused(tmp_path, capsys, override, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  variant: dense\n")
    one_error_line(capsys, ["train", str(cfg), "--set", override, "--output-dir", str(tmp_path / "r")], f"'{key}'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override,key", [("model.num_queries=0", "model.num_queries"),
                                          ("model.core_groups=[1, 0, 1, 1, 1, 1]", "model.core_groups"),
                                          ("data.top_k=0", "data.top_k"), ("model.backbone_depth=101", "backbone")])
def test_out_of_range_detection_settings_are_refused(tmp_path, capsys, override, key):
    cfg = tmp_path / "d.yaml"
    cfg.write_text("task: detection\n")
    one_error_line(capsys, ["count", str(cfg), "--set", override], key)
