"""The LCT recipe options: blocks kept dense, the stable-rank switch, moment transport, CoLA layers."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lors
from lors import LowRankLinear
from lors.cli.config import ConfigError, load_config
from lors.engine.lct_schedule import LctSchedule, LctScheduleConfig, target_paths, transport_moments
from lors.engine.checkpoint import load_trained, read_checkpoint
from lors.models.gpt import GPT
from lors.models.vit import VisionTransformer, build_vit
from lors.nn.cola import CoLALinear
from lors.nn.spectral import stable_rank

from test_engine import TINY, lct_ranks_of, run

BLOCKS = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"


def fake_trainer(model):
    log = []
    return SimpleNamespace(model=model, info=log.append, warn=log.append, log=log,
                           request_optimizer_rebuild=lambda: None)


def test_kept_dense_blocks_stay_nn_linear(tmp_path):
    cfg = load_config(None, TINY + ["model.depth=4", "train.epochs=2", "lct.rank=2", "lct.warmup_epochs=1",
                                    "lct.keep_dense=[0, -1]"])
    run(cfg, tmp_path / "run")
    meta, _ = read_checkpoint(tmp_path / "run")
    ranks = lct_ranks_of(meta)
    assert sorted({p.split(".")[1] for p in ranks}) == ["1", "2"]  # blocks 0 and 3 (= -1) are not factorised
    model = load_trained(tmp_path / "run", lambda: build_vit(cfg.model))[0]
    for i, block in enumerate(model.blocks):
        kinds = {type(m) for m in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2)}
        assert kinds == ({nn.Linear} if i in (0, 3) else {LowRankLinear}), i


def test_target_paths_read_negative_block_indices():
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, dim=8, depth=5, heads=2, mlp_dim=8)
    kept = target_paths(model, BLOCKS, [0, -2])
    assert {p.split(".")[1] for p in kept} == {"1", "2", "4"} and len(kept) == 12


def test_stable_rank_is_frobenius_over_spectral_norm_squared():
    Q1, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    Q2, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    W = Q1[:, :4] @ np.diag([3.0, 2.0, 1.0, 0.0]) @ Q2.T
    assert stable_rank(torch.tensor(W)) == pytest.approx((9 + 4 + 1) / 9)


def test_stable_rank_switch_waits_for_settled_ranks_then_cuts_at_them():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, dim=16, depth=2, heads=2,
                              mlp_dim=32)
    cb = LctSchedule(LctScheduleConfig(switch="stable_rank", warmup_epochs=2, stable_rank_tol=0.05,
                                       stable_rank_scale=1.5), BLOCKS)
    trainer = fake_trainer(model)
    qkv = model.blocks[0].attn.qkv.weight
    cb.on_epoch_end(trainer, 0, {})  # first measurement: nothing to compare with
    with torch.no_grad():
        qkv[:, :8].mul_(3.0)  # the stable rank of one layer moves a lot
    cb.on_epoch_end(trainer, 1, {})
    assert not cb.final_ranks
    with torch.no_grad():
        qkv.mul_(1.001)  # a uniform scale leaves every stable rank unchanged
    cb.on_epoch_end(trainer, 2, {})
    paths = target_paths(model, BLOCKS)
    expected = {}
    for p in paths:
        s = np.linalg.svd(model.get_submodule(p).weight.detach().double().numpy(), compute_uv=False)
        r = math.ceil(1.5 * (s ** 2).sum() / s[0] ** 2)
        out_f, in_f = model.get_submodule(p).weight.shape
        if r * (out_f + in_f) < out_f * in_f:
            expected[p] = r
    assert cb.final_ranks == expected and expected
    cb.on_epoch_start(trainer, 3)
    assert cb.done and lors.lct_ranks(model) == expected
    assert all(isinstance(model.get_submodule(p), LowRankLinear) for p in expected)


def test_stable_rank_switch_respects_the_minimum_dense_epochs():
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, dim=16, depth=2, heads=2,
                              mlp_dim=32)
    cb = LctSchedule(LctScheduleConfig(switch="stable_rank", warmup_epochs=5), BLOCKS)
    for epoch in range(4):  # nothing changes, but epoch 5 has not ended yet
        cb.on_epoch_end(fake_trainer(model), epoch, {})
    assert not cb.final_ranks
    cb.on_epoch_end(fake_trainer(model), 4, {})
    assert cb.final_ranks


def test_transported_first_moments_are_the_gradients_of_the_rebalanced_factors():
    torch.manual_seed(0)
    layer = LowRankLinear(7, 5, 3).double()
    with torch.no_grad():
        layer.U.mul_(torch.linspace(0.2, 3.0, 3, dtype=torch.float64))  # unbalanced factors
    x, y = torch.randn(16, 7, dtype=torch.float64), torch.randn(16, 5, dtype=torch.float64)
    loss = lambda: F.mse_loss(layer(x), y)
    opt = torch.optim.Adam(layer.parameters())
    loss().backward()
    opt.step()  # creates the state
    opt.zero_grad()
    loss().backward()
    for p in (layer.U, layer.V):
        opt.state[p]["exp_avg"].copy_(p.grad)
        opt.state[p]["exp_avg_sq"].copy_(p.grad.square())
    product = (layer.U @ layer.V).detach().clone()
    U_old = layer.U.detach().clone()
    layer.reproject()
    transport_moments(opt, layer, U_old)
    torch.testing.assert_close(layer.U @ layer.V, product)  # same function
    layer.zero_grad()
    loss().backward()
    for p in (layer.U, layer.V):
        torch.testing.assert_close(opt.state[p]["exp_avg"], p.grad, atol=1e-10, rtol=1e-8)
        assert opt.state[p]["exp_avg_sq"].shape == p.shape and (opt.state[p]["exp_avg_sq"] >= 0).all()


def test_cola_layer_computes_b_sigma_a_x_with_its_count_and_gradients():
    torch.manual_seed(0)
    layer = CoLALinear(12, 9, 4)
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(layer(x), F.silu(x @ layer.A.T) @ layer.B.T + layer.bias)
    assert lors.count_parameters(layer) == layer.num_stored() == 4 * (12 + 9) + 9
    layer(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    with pytest.raises(ValueError, match="activation"):
        CoLALinear(4, 4, 2, activation="tanh")


def test_cola_gpt_counts_in_closed_form_and_needs_a_rank():
    model = GPT(vocab_size=32, block_size=8, dim=16, depth=3, heads=2, mlp_dim=32, variant="cola", lct_rank=4)
    per_block = 4 * (16 + 48) + 48 + 4 * (16 + 16) + 16 + 4 * (16 + 32) + 32 + 4 * (32 + 16) + 16 + 4 * 16  # + 2 norms
    assert model.block_parameter_count() == 3 * per_block
    assert model(torch.randint(0, 32, (2, 8))).shape == (2, 8, 32)
    with pytest.raises(ValueError, match="lct_rank"):
        GPT(vocab_size=32, block_size=8, dim=16, depth=1, heads=2, mlp_dim=32, variant="cola")
    with pytest.raises(ConfigError, match="model.lct_rank"):
        load_config(None, TINY + ["model.variant=cola"])


@pytest.mark.parametrize("override,match", [
    ("lct.switch=sometimes", "lct.switch"),
    ("lct.reproject_moments=keep", "lct.reproject_moments"),
    ("lct.keep_dense=first", "lct.keep_dense"),
    ("lct.stable_rank_scale=0", "lct.stable_rank_scale"),
])
def test_recipe_options_are_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, TINY + [override])


def test_stable_rank_switch_does_not_take_an_epsilon():
    with pytest.raises(ConfigError, match="stable_rank"):
        load_config(None, TINY + ["lct.switch=stable_rank", "lct.epsilon=0.5"])


def test_spectral_init_is_the_balanced_truncation_of_a_dense_init():
    layer = LowRankLinear(10, 7, 3)
    torch.manual_seed(5)
    layer.reset_spectral_()
    torch.manual_seed(5)
    dense = torch.empty(7, 10, dtype=torch.float64)
    nn.init.kaiming_uniform_(dense, a=math.sqrt(5))
    U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
    torch.testing.assert_close((layer.U @ layer.V).double(), (U[:, :3] * S[:3]) @ Vh[:3], atol=1e-6, rtol=1e-5)
    gram_u, gram_v = layer.U.T @ layer.U, layer.V @ layer.V.T  # balanced: both diag(S_r)
    torch.testing.assert_close(gram_u, torch.diag(S[:3]).float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gram_v, torch.diag(S[:3]).float(), atol=1e-5, rtol=1e-4)


def test_spectral_init_callback_runs_once_on_a_fresh_lct_model(tmp_path):
    from lors.engine.lct_schedule import SpectralInit
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, dim=16, depth=2, heads=2,
                              mlp_dim=32, variant="lct", lct_rank=3)
    before = model.blocks[0].mlp.fc1.U.detach().clone()
    trainer = fake_trainer(model)
    trainer.step = 7  # a resumed run: the trained factors stay
    SpectralInit().on_fit_start(trainer)
    assert torch.equal(model.blocks[0].mlp.fc1.U, before)
    trainer.step = 0
    SpectralInit().on_fit_start(trainer)
    fc1 = model.blocks[0].mlp.fc1
    assert not torch.equal(fc1.U, before)
    torch.testing.assert_close(fc1.U.T @ fc1.U, fc1.V @ fc1.V.T, atol=1e-5, rtol=1e-4)  # balanced factors


@pytest.mark.parametrize("variant,layer", [("lct", LowRankLinear), ("cola", CoLALinear)])
def test_dense_blocks_of_a_factorised_model_are_nn_linear_and_counted(variant, layer):
    dim, mlp, r, depth = 16, 32, 3, 4
    model = GPT(vocab_size=32, block_size=8, dim=dim, depth=depth, heads=2, mlp_dim=mlp, variant=variant, lct_rank=r,
                dense_blocks=[0, -1])
    for i, block in enumerate(model.blocks):
        kinds = {type(m) for m in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2)}
        assert kinds == ({nn.Linear} if i in (0, depth - 1) else {layer}), i
    shapes = [(dim, 3 * dim), (dim, dim), (dim, mlp), (mlp, dim)]
    dense = sum(i * o + o for i, o in shapes) + 4 * dim   # + two LayerNorms
    low = sum(r * (i + o) + o for i, o in shapes) + 4 * dim
    assert model.block_parameter_count() == 2 * dense + (depth - 2) * low


@pytest.mark.parametrize("override,match", [
    ("model.dense_blocks=[0,12]", "model.dense_blocks"),     # the tiny ViT has 2 blocks
    ("model.dense_blocks=first", "model.dense_blocks"),
    ("model.dense_blocks=[0]", "model.dense_blocks"),        # the dense variant has nothing to keep dense
    ("train.factor_lr_rule=fan-in", "train.factor_lr_rule"),
])
def test_dense_blocks_and_factor_lr_rule_are_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, TINY + [override])
    with pytest.raises(ValueError, match="dense_blocks"):
        VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, dim=8, depth=2, heads=2, mlp_dim=8,
                          variant="lors", dense_blocks=[0])


def test_factor_lr_rules_give_each_factor_its_rate():
    from lors.optim import factor_scales, param_groups
    model = nn.Sequential(LowRankLinear(16, 8, 2), LowRankLinear(16, 8, 8), CoLALinear(9, 4, 2), nn.Linear(3, 3))
    lr_of = lambda groups: {id(p): g["lr"] for g in groups for p in g["params"]}
    base = lr_of(param_groups(model, 1e-3, factor_lr_rule="1"))
    fan_in = lr_of(param_groups(model, 1e-3, factor_lr_rule="fan_in", factor_lr_scale=0.5))
    rank = lr_of(param_groups(model, 1e-3, factor_lr_rule="rank"))
    a, b, c, d = model
    assert set(base.values()) == {1e-3}
    # fan_in: the output factor (fan-in r) at sqrt(n / r), the input factor (fan-in n) at 1; times factor_lr_scale
    assert fan_in[id(a.U)] == pytest.approx(0.5e-3 * math.sqrt(16 / 2)) and fan_in[id(a.V)] == pytest.approx(0.5e-3)
    assert fan_in[id(b.U)] == pytest.approx(0.5e-3 * math.sqrt(16 / 8))
    assert fan_in[id(c.B)] == pytest.approx(0.5e-3 * math.sqrt(9 / 2)) and fan_in[id(c.A)] == pytest.approx(0.5e-3)
    assert fan_in[id(d.weight)] == 1e-3  # not a factor
    # rank: both factors at sqrt(r_min / r); r_min = 2
    assert rank[id(a.U)] == rank[id(a.V)] == rank[id(c.A)] == pytest.approx(1e-3)
    assert rank[id(b.U)] == rank[id(b.V)] == pytest.approx(1e-3 * math.sqrt(2 / 8))
    assert len(factor_scales(model, "rank")) == 6
    with pytest.raises(ValueError, match="factor_lr_rule"):
        factor_scales(model, "fan-in")


class SumTask:
    collate_fn = None

    def loss(self, model, batch, device):
        return model(batch[0]).square().mean(), 4

    def evaluate(self, model, loader, device):
        return {}


def test_trainer_gives_the_factors_the_rates_of_train_factor_lr_rule(tmp_path):
    from lors.engine import TrainConfig, Trainer
    model = nn.Sequential(LowRankLinear(16, 8, 4), nn.Linear(8, 2))
    trainer = Trainer(TrainConfig(epochs=1, warmup_epochs=0, lr=1e-2, min_lr=1e-2, progress=False,
                                  factor_lr_rule="fan_in"), SumTask(), tmp_path, log=lambda s: None)
    trainer.fit(model, [(torch.randn(4, 16), torch.zeros(4))])
    lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert lrs[id(model[0].U)] == pytest.approx(1e-2 * math.sqrt(16 / 4))
    assert lrs[id(model[0].V)] == lrs[id(model[1].weight)] == pytest.approx(1e-2)
    with pytest.raises(ConfigError, match="train.factor_lr_rule"):
        TrainConfig(factor_lr_rule="by_rank")


def test_keep_dense_out_of_range_fails_at_fit_start_not_at_the_switch(tmp_path):
    cfg = load_config(None, TINY + ["train.epochs=3", "lct.rank=2", "lct.warmup_epochs=2", "lct.keep_dense=[5]"])
    with pytest.raises(ValueError, match=r"lct.keep_dense must be a list of block indices in \[-2, 1\]"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.json").exists()  # no epoch was trained
