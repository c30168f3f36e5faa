import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lors.cli.config import load_config
from lors.data.classification import build_dataset
from lors.apply.record import ConversionRecord
from lors.cli.experiment import run_training
from lors.engine import TrainConfig, Trainer
from lors.engine.checkpoint import read_checkpoint, save_checkpoint, load_model_state, optimizer_from_flat
from lors.engine.trainer import lr_at
from lors.models.vit import VisionTransformer, build_vit
from lors.optim import param_groups
from lors.tasks.classification import mix_batch
from torchrun_helper import torchrun

HERE = Path(__file__).resolve().parent
TINY = ["model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=32", "model.patch_size=4",
        "train.progress=false", "train.warmup_epochs=1", "train.lr=0.003"]


def run(cfg, run_dir, resume=False):
    return run_training(cfg, run_dir, resume=resume, log=lambda s: None)


def adamw(model, lr, weight_decay):
    return torch.optim.AdamW(param_groups(model, lr, weight_decay), lr=lr)


def lct_ranks_of(meta):
    return ConversionRecord.from_dict(meta["conversion"]).lct_ranks


def test_param_groups_exempt_norms_biases_embeddings():
    m = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, dim=8, depth=2, heads=2, mlp_dim=8,
                          variant="lors", rank=1)
    groups = param_groups(m, 1e-3, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    decay_names = {names[id(p)] for g in groups if g["weight_decay"] for p in g["params"]}
    no_decay_names = {names[id(p)] for g in groups if not g["weight_decay"] for p in g["params"]}
    assert "stacks.qkv.bias" in no_decay_names  # 2-D per-layer LORS bias
    assert {"cls_token", "pos_embed", "norm.weight", "blocks.0.norm1.weight"} <= no_decay_names
    assert {"stacks.qkv.shared_weight", "stacks.qkv.A.0", "stacks.fc2.B.1", "head.weight"} <= decay_names
    assert {g["weight_decay"] for g in groups} == {0.05, 0.0}


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5, abs=0.02)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_mixup_targets_are_convex_combinations():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 4, 4), torch.arange(8) % 3
    x2, t = mix_batch(x, y, 3, mixup=0.8, cutmix=0.0)
    assert t.shape == (8, 3) and torch.allclose(t.sum(1), torch.ones(8))
    assert not torch.equal(x2, x)


def test_checkpoint_round_trip_and_optimizer_state(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    opt = adamw(m, 1e-2, 0.1)
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, m, {"epoch": 3, "note": "x"}, opt)
    meta, tensors = read_checkpoint(tmp_path)
    assert meta["epoch"] == 3 and (tmp_path / meta["tensors_file"]).is_file()
    m2 = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    load_model_state(m2, tensors)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = adamw(m2, 1e-2, 0.1)
    opt2.load_state_dict(optimizer_from_flat(tensors, meta["optimizer_groups"]))
    assert torch.equal(opt2.state[m2[0].weight]["exp_avg"], opt.state[m[0].weight]["exp_avg"])
    with pytest.raises(ValueError, match="does not fit"):
        load_model_state(nn.Linear(4, 3), tensors)
    save_checkpoint(tmp_path, m, {"epoch": 4}, opt)  # the older tensors file is removed
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_training_reduces_loss(tmp_path):
    hist = run(load_config(None, TINY + ["train.epochs=4", "train.warmup_epochs=0", "train.min_lr=0.003",
                                        "loss.label_smoothing=0", "data.augment=false"]), tmp_path)
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]


class NanTask:
    collate_fn = None

    def loss(self, model, batch, device):
        return model(batch[0]).sum() * float("nan"), 4

    def evaluate(self, model, loader, device):
        return {}


def test_non_finite_loss_stops(tmp_path):
    loader = [(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))]
    trainer = Trainer(TrainConfig(epochs=1, warmup_epochs=0, progress=False), NanTask(), tmp_path, log=lambda s: None)
    with pytest.raises(RuntimeError, match="non-finite loss"):
        trainer.fit(nn.Linear(2, 2), loader)


KILLER = """
import os, signal, sys
import lors.engine.checkpoint as ck
calls = {"n": 0}
real = ck._atomic_write_text
def killing_write(path, text):
    calls["n"] += 1
    if calls["n"] == 3:   # third epoch: tensors file renamed, JSON not yet replaced -> die here
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, text)
ck._atomic_write_text = killing_write
from lors.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    overrides = TINY + ["train.epochs=4"]
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("data:\n  dataset: digits\n")
    full = run(load_config(cfg_path, overrides), tmp_path / "full")

    args = ["train", str(cfg_path), "--output-dir", str(tmp_path / "killed")]
    for o in overrides:
        args += ["--set", o]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    r = subprocess.run([sys.executable, "-c", KILLER, *args], capture_output=True, text=True, env=env)
    assert r.returncode == -9, r.stderr  # really killed
    meta = json.loads((tmp_path / "killed" / "last.json").read_text())
    assert meta["epoch"] == 1  # two complete epochs survived; the half-written third did not corrupt them
    resumed = run(load_config(cfg_path, overrides), tmp_path / "killed", resume=True)
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        for k in ("train_loss", "test_loss", "top1"):
            assert a[k] == b[k], (k, a, b)


def test_lct_schedule_factorises_after_warmup_and_resumes(tmp_path):
    overrides = TINY + ["train.epochs=3", "lct.epsilon=0.6", "lct.warmup_epochs=1"]
    hist = run(load_config(None, overrides), tmp_path / "lct")
    assert hist[1]["params"] < hist[0]["params"]  # factorised before epoch 2
    meta, tensors = read_checkpoint(tmp_path / "lct")
    assert 0 < len(lct_ranks_of(meta)) <= 8 and any(k.endswith(".U") for k in tensors)
    # resuming a factorised run rebuilds the factors with the saved ranks
    cfg = load_config(None, overrides[:-3] + ["train.epochs=4", "lct.epsilon=0.6", "lct.warmup_epochs=1"])
    more = run(cfg, tmp_path / "lct", resume=True)
    assert len(more) == 4 and more[-1]["params"] == hist[-1]["params"]


def test_ddp_two_cpu_processes_hold_identical_weights(tmp_path):
    overrides = TINY + ["train.epochs=2", "model.variant=lors", "model.rank=2", "train.device=cpu"]
    torchrun(HERE / "ddp_worker.py", tmp_path, *overrides)
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys() and "stacks.qkv.shared_weight" in w0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    torch.manual_seed(0)
    init = build_vit(load_config(None, overrides).model).state_dict()
    assert not torch.equal(init["stacks.qkv.shared_weight"], w0["stacks.qkv.shared_weight"])  # it trained
    # each rank saw half of the data per epoch
    meta, _ = read_checkpoint(tmp_path / "run")
    assert meta["world_size"] == 2


def test_lct_reprojection_retruncates_and_frobenius_decay(tmp_path):
    overrides = TINY + ["train.epochs=2", "lct.rank=6", "lct.warmup_epochs=0",
                        "lct.reproject_every=10", "lct.reproject_epsilon=0.5",
                        "lct.frobenius_decay=0.01"]
    hist = run(load_config(None, overrides), tmp_path / "r")
    meta, _ = read_checkpoint(tmp_path / "r")
    ranks = lct_ranks_of(meta)
    assert len(ranks) == 8 and max(ranks.values()) < 6  # re-truncated below the starting rank
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in hist)


def test_frobenius_penalty_matches_dense_formula_and_groups():
    from lors import LowRankLinear
    from lors.nn.lowrank import frobenius_penalty

    torch.manual_seed(0)
    m = nn.Sequential(LowRankLinear(7, 5, 3), nn.ReLU(), LowRankLinear(5, 4, 2))
    expected = sum((l.U @ l.V).pow(2).sum() for l in (m[0], m[2]))
    assert torch.allclose(frobenius_penalty(m), expected)
    groups = param_groups(m, 1e-3, 0.1, exempt=frozenset(id(p) for p in (m[0].U, m[0].V)))
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(m[0].U)] == 0.0 and decay_of[id(m[2].U)] == 0.1
