"""Shared-aware parameter groups (lors.param_groups), the engine's lr schedule per group, init options."""
import math

import pytest
import torch
from torch import nn

import lors
from lors.cli.config import ConfigError, load_config
from lors.engine.trainer import lr_at
from conftest import mixing
from lors.models.vit import VisionTransformer
from lors.optim import lors_roles, param_groups, set_lr

pytestmark = pytest.mark.filterwarnings("ignore:LORS stack")


def roles_by_name(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            assert names[id(p)] not in out, f"{names[id(p)]} is in two groups"
            out[names[id(p)]] = g
    return out


def check_groups(model, shared_names, private_names, n_layers, lr=1e-3):
    groups = param_groups(model, lr=lr, weight_decay=0.1)
    by_name = roles_by_name(model, groups)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_name) == trainable  # every trainable tensor exactly once
    got_shared = {n for n, g in by_name.items() if g["name"].startswith("shared")}
    got_private = {n for n, g in by_name.items() if g["name"].startswith("private")}
    assert got_shared == set(shared_names)
    assert got_private == set(private_names)
    for n in shared_names:
        assert by_name[n]["lr_scale"] == pytest.approx(1 / math.sqrt(n_layers))
        assert by_name[n]["lr"] == pytest.approx(lr / math.sqrt(n_layers))
    for n in trainable - set(shared_names):
        assert by_name[n]["lr_scale"] == 1.0 and by_name[n]["lr"] == lr
    return by_name


def test_static_lors_vit_groups():
    depth = 4
    m = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, dim=8, depth=depth, heads=2,
                          mlp_dim=8, variant="lors", rank=1)
    kinds = ("qkv", "proj", "fc1", "fc2")
    shared = [f"stacks.{k}.shared_weight" for k in kinds]
    private = [f"stacks.{k}.{f}.{i}" for k in kinds for f in "AB" for i in range(depth)]
    by_name = check_groups(m, shared, private, depth)
    assert by_name["stacks.qkv.bias"]["name"] == "other/no_decay"  # per-layer biases are not residual factors


def test_adaptive_and_static_stacks_in_adamixer_mixing():
    m = mixing(num_stages=3, dim=16, n_groups=2, in_points=4, out_points=4,
                       variant="lors", core_size=2, core_groups=[1, 2, 1], out_rank=2)
    shared = ["m_generator.shared.weight", "m_generator.shared.bias", "s_generator.shared.weight",
              "s_generator.shared.bias", "out_proj.shared_weight"]
    private = [f"{g}.{part}.{i}" for g in ("m_generator", "s_generator") for part in ("left", "right")
               for i in range(3)]
    private += [f"{g}.private.{i}.{w}" for g in ("m_generator", "s_generator") for i in range(3)
                for w in ("weight", "bias")]
    private += [f"out_proj.{f}.{i}" for f in "AB" for i in range(3)]
    check_groups(m, shared, private, 3)


def test_converted_model_groups_and_frozen_excluded():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    enc = lors.convert(nn.TransformerEncoder(layer, 5, enable_nested_tensor=False), lors.LorsConfig(rank=2))
    shared_ids, private_ids = lors_roles(enc)
    names = {id(p): n for n, p in enc.named_parameters()}
    shared = [names[i] for i in shared_ids]
    private = [names[i] for i in private_ids]
    # in-projection, out-projection, linear1 and linear2: one shared weight each
    assert len(shared) == 4 and all(n.endswith("shared_weight") for n in shared)
    assert len(private) == 4 * 2 * 5
    check_groups(enc, shared, private, 5)
    enc.layers[0].norm1.weight.requires_grad_(False)
    frozen = {id(p) for g in param_groups(enc, 1e-3) for p in g["params"]}
    assert id(enc.layers[0].norm1.weight) not in frozen


def test_scale_rules_and_errors():
    m = lors.LorsLinearStack(9, 4, 4, rank=1)
    by = lambda rule: next(g for g in param_groups(m, 1.0, shared_lr_scale=rule) if g["name"].startswith("shared"))
    assert by("1/sqrt(N)")["lr"] == pytest.approx(1 / 3)
    assert by("1/N")["lr"] == pytest.approx(1 / 9)
    assert by(0.5)["lr"] == pytest.approx(0.5)
    assert by(lambda n: 2.0 / n)["lr"] == pytest.approx(2 / 9)
    private = next(g for g in param_groups(m, 1.0, private_lr_scale=0.5) if g["name"] == "private")
    assert private["lr"] == 0.5
    with pytest.raises(ValueError, match="shared_lr_scale"):
        param_groups(m, 1.0, shared_lr_scale="sqrt")
    with pytest.raises(ValueError, match="shared_lr_scale"):
        param_groups(m, 1.0, shared_lr_scale=-1)
    with pytest.raises(ValueError, match="private_lr_scale"):
        param_groups(m, 1.0, private_lr_scale=0)


def test_engine_schedule_keeps_the_ratio_through_warmup_and_cosine():
    m = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, dim=8, depth=4, heads=2,
                          mlp_dim=8, variant="lors", rank=1)
    opt = torch.optim.AdamW(param_groups(m, 1e-3, 0.05, shared_lr_scale="1/sqrt(N)"), lr=1e-3)
    shared = next(g for g in opt.param_groups if g["name"].startswith("shared"))
    other = next(g for g in opt.param_groups if g["name"] == "other")
    seen = []
    for step in range(100):
        lr = lr_at(step, 100, 10, 1e-3, 1e-5)
        set_lr(opt, lr)
        assert other["lr"] == pytest.approx(lr)
        assert shared["lr"] == pytest.approx(lr / 2)  # N = 4
        seen.append(lr)
    assert seen[0] < seen[9] and seen[-1] < seen[20]  # warm-up then decay really happened


def test_torch_scheduler_keeps_the_ratio():
    m = lors.LorsLinearStack(4, 4, 4, rank=1)
    opt = torch.optim.AdamW(param_groups(m, 1e-2), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["shared/N=4"] / lrs["private"] == pytest.approx(0.5)


def test_yaml_keys_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  shared_lr_scale: 0.25\n  private_lr_scale: 0.5\n")
    cfg = load_config(f)
    assert cfg.train.shared_lr_scale == 0.25 and cfg.train.private_lr_scale == 0.5
    assert load_config().train.shared_lr_scale == "1/sqrt(N)"
    f.write_text("train:\n  shared_lr_scale: 1/sqrtN\n")
    with pytest.raises(ConfigError, match="train.shared_lr_scale"):
        load_config(f)


def test_factor_init_official_uses_3d_fan_in():
    torch.manual_seed(0)
    rows, cols, r = 32, 8, 4
    ours = lors.AdaptiveLors(2, 8, rows, cols, rank=r, groups=3, param_groups=2, factor_init="matrix")
    official = lors.AdaptiveLors(2, 8, rows, cols, rank=r, groups=3, param_groups=2)
    for L, R, bound_l, bound_r in ((ours.left[0], ours.right[0], math.sqrt(6 / r), math.sqrt(6 / cols)),
                                   (official.left[0], official.right[0], math.sqrt(6 / (rows * r)),
                                    math.sqrt(6 / (r * cols)))):
        assert L.abs().max() <= bound_l and L.abs().max() > 0.9 * bound_l
        assert R.abs().max() <= bound_r and R.abs().max() > 0.9 * bound_r
    with pytest.raises(ValueError, match="factor_init"):
        lors.AdaptiveLors(2, 8, rows, cols, rank=r, factor_init="xavier")


def test_layer_bias_init_random_draws_each_layer_like_a_dense_generator():
    torch.manual_seed(0)
    d_q, rows, cols, P, N = 16, 6, 5, 2, 3
    zero = lors.AdaptiveLors(N, d_q, rows, cols, rank=2, param_groups=P, layer_bias=True)
    rand = lors.AdaptiveLors(N, d_q, rows, cols, rank=2, param_groups=P, layer_bias=True, layer_bias_init="random")
    q = torch.randn(4, d_q)
    # zero: every layer generates the same matrices at init; random: every layer its own
    assert all(torch.equal(zero(q, i), zero(q, 0)) for i in range(N))
    assert all((rand(q, i) - rand(q, j)).abs().min() > 0 for i in range(N) for j in range(i))
    # the shared bias is zeroed, so at init (generator weights zero) layer i's matrix *is* its bias
    assert rand.shared.bias.abs().sum() == 0
    bound = 1 / math.sqrt(d_q)  # nn.Linear's bias bound, as for a dense GeneratorStack's bias
    for i in range(N):
        assert torch.equal(rand(q, i), rand.layer_bias[i].view(P, rows, cols).expand(4, P, rows, cols))
        assert rand.layer_bias[i].abs().max() <= bound and rand.layer_bias[i].abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="layer_bias_init"):
        lors.AdaptiveLors(N, d_q, rows, cols, rank=2, layer_bias=True, layer_bias_init="normal")
    with pytest.raises(ValueError, match="layer_bias=True"):
        lors.AdaptiveLors(N, d_q, rows, cols, rank=2, layer_bias_init="random")


def test_b_init_std():
    torch.manual_seed(0)
    zero = lors.LorsLinearStack(3, 64, 64, rank=8)
    small = lors.LorsLinearStack(3, 64, 64, rank=8, b_init_std=1e-2)
    assert all(b.abs().sum() == 0 for b in zero.B)
    assert all(b.std().item() == pytest.approx(1e-2, rel=0.1) for b in small.B)
    with pytest.raises(ValueError, match="b_init_std"):
        lors.LorsLinearStack(3, 4, 4, rank=1, b_init_std=-1.0)
