"""The gradual LCT schedule (lct.ramp_epochs) and the LCT factors' learning-rate group."""
import pytest
import torch
from torch import nn

from lors import LowRankLinear
from lors.cli.config import ConfigError, load_config
from lors.engine.lct_schedule import project, ramp_rank
from lors.engine.checkpoint import read_checkpoint
from lors.cli.experiment import run_training
from lors.optim import param_groups

from test_engine import TINY, lct_ranks_of, run


def test_ramp_rank_is_cubic_from_full_to_final():
    ranks = [ramp_rank(64, 10, j, 8) for j in range(11)]
    assert ranks[0] == 64 and ranks[8:] == [10, 10, 10]
    assert all(a >= b for a, b in zip(ranks, ranks[1:]))  # never grows
    assert ranks[4] == 10 + round(54 * 0.5 ** 3)  # halfway: an eighth of the excess left


def test_project_keeps_the_best_approximation_at_the_ramp_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 6))
    W = model[0].weight.detach().double().clone()
    ranks = project(model, {"0": 2}, step=1, steps=2)  # halfway: 2 + round(8 * 0.5 ** 3) = 3
    assert ranks == {"0": 3} and torch.linalg.matrix_rank(model[0].weight) == 3
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    assert torch.allclose(model[0].weight.double(), (U[:, :3] * S[:3]) @ Vh[:3], atol=1e-6)
    assert torch.linalg.matrix_rank(model[2].weight) == 6  # layers not in the plan are untouched


def test_ramp_projects_then_factorises_at_the_final_ranks_and_resumes(tmp_path):
    overrides = TINY + ["lct.epsilon=0.6", "lct.warmup_epochs=1", "lct.ramp_epochs=2"]
    hist = run(load_config(None, overrides + ["train.epochs=5"]), tmp_path / "full")
    # epochs 2-3 train dense weights projected onto falling ranks, epoch 4 factorises
    params = [h["params"] for h in hist]
    assert params[0] == params[1] == params[2] > params[3] == params[4]
    meta, _ = read_checkpoint(tmp_path / "full")
    ranks = lct_ranks_of(meta)
    assert ranks == meta["callbacks"]["LctSchedule"]["final_ranks"] and len(ranks) == 8
    # a run stopped in the middle of the ramp (after epoch 2's checkpoint) continues exactly as the uninterrupted one
    cfg = load_config(None, overrides + ["train.epochs=5"])

    def stop_in_epoch_3(line):
        if line.startswith("epoch=3 "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "cut", log=stop_in_epoch_3)
    resumed = run(cfg, tmp_path / "cut", resume=True)
    assert len(resumed) == 5
    for a, b in zip(hist, resumed):
        assert (a["train_loss"], a["top1"], a["params"]) == (b["train_loss"], b["top1"], b["params"])


def test_ramp_epochs_must_not_be_negative():
    with pytest.raises(ConfigError, match="lct.ramp_epochs"):
        load_config(None, ["lct.ramp_epochs=-1"])


def test_lct_factors_get_their_own_learning_rate():
    torch.manual_seed(0)
    m = nn.Sequential(LowRankLinear(6, 5, 2), nn.Linear(5, 3))
    groups = param_groups(m, 1e-3, 0.1, factor_lr_scale=0.25)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(m[0].U)] == lr_of[id(m[0].V)] == pytest.approx(2.5e-4)
    assert lr_of[id(m[1].weight)] == lr_of[id(m[0].bias)] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="factor_lr_scale"):
        param_groups(m, 1e-3, factor_lr_scale=0)
