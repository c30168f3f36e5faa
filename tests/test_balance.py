"""Per-layer gradient balancing of shared LORS tensors (lors.balance_shared_gradients, GradBalance)."""
import pytest
import torch
from torch import nn

import lors
from lors.cli.config import ConfigError, load_config
from lors.cli.experiment import build_experiment, run_training
from conftest import mixing
from lors.models.vit import build_vit
from lors.nn.balance import GradBalance

pytestmark = pytest.mark.filterwarnings("ignore:LORS stack")


def per_layer_grads(stack, inputs, weights, tensor):
    """Gradient of ``tensor`` that each layer's use contributes, computed one layer at a time (no balancing)."""
    balance, stack.grad_balance = stack.grad_balance, None
    out = []
    for i, (x, w) in enumerate(zip(inputs, weights)):
        loss = (stack(x, i) * w).sum()
        out.append(torch.autograd.grad(loss, tensor)[0])
    stack.grad_balance = balance
    return out


def expected(grads, norms):
    """sum_i g_i * mean(n) / n_i over the layers with n_i > 0 (a zero gradient stays zero)."""
    seen = [n for n in norms if n > 0]
    mean = sum(seen) / len(seen)
    return sum(g * (mean / n if n > 0 else 1.0) for g, n in zip(grads, norms))


def balanced_grad(stack, inputs, weights, tensor):
    tensor.grad = None
    sum((stack(x, i) * w).sum() for i, (x, w) in enumerate(zip(inputs, weights))).backward()
    return tensor.grad.clone()


def test_static_stack_forward_unchanged_and_gradient_rescaled_per_layer():
    torch.manual_seed(0)
    stack = lors.LorsLinearStack(3, 5, 4, rank=2, dtype=torch.float64)
    nn.init.normal_(stack.B[0]), nn.init.normal_(stack.B[2])  # layers differ
    inputs = [torch.randn(7, 5, dtype=torch.float64) for _ in range(3)]
    weights = [torch.randn(7, 4, dtype=torch.float64) * s for s in (10.0, 1.0, 0.1)]  # very different sizes
    before = [stack(x, i) for i, x in enumerate(inputs)]
    plain = balanced_grad(stack, inputs, weights, stack.shared_weight)
    assert lors.balance_shared_gradients(stack, beta=0.5) == 1
    for i, x in enumerate(inputs):
        assert torch.equal(stack(x, i), before[i])
    # step 1: the plain sum; it sets the running norms
    g = per_layer_grads(stack, inputs, weights, stack.shared_weight)
    norms = [float(t.norm()) for t in g]
    assert norms[0] > 50 * norms[2]
    torch.testing.assert_close(balanced_grad(stack, inputs, weights, stack.shared_weight), plain)
    # steps 2 and 3, new data: scaled by the running norms so far, then running norm = beta * old + (1 - beta) * new
    for _ in range(2):
        inputs2 = [torch.randn(7, 5, dtype=torch.float64) for _ in range(3)]
        g2 = per_layer_grads(stack, inputs2, weights, stack.shared_weight)
        got = balanced_grad(stack, inputs2, weights, stack.shared_weight)
        torch.testing.assert_close(got, expected(g2, norms), rtol=1e-5, atol=1e-10)
        assert not torch.allclose(got, sum(g2), rtol=0.1)  # balancing really changed the gradient
        norms = [0.5 * n + 0.5 * float(t.norm()) for n, t in zip(norms, g2)]
    # off again: the plain summed gradient
    assert lors.balance_shared_gradients(stack, enabled=False) == 1 and stack.grad_balance is None
    torch.testing.assert_close(balanced_grad(stack, inputs2, weights, stack.shared_weight), sum(g2))


def test_adaptive_stack_balances_weight_and_bias_and_leaves_private_grads_alone():
    torch.manual_seed(1)
    gen = lors.AdaptiveLors(3, 6, 4, 5, rank=2, param_groups=2, dtype=torch.float64)
    nn.init.normal_(gen.shared.weight)
    inputs = [torch.randn(2, 3, 6, dtype=torch.float64) for _ in range(3)]
    weights = [torch.randn(2, 3, 2, 4, 5, dtype=torch.float64) * s for s in (5.0, 1.0, 0.2)]
    before = [gen(q, i) for i, q in enumerate(inputs)]
    plain_private = torch.autograd.grad(sum((gen(q, i) * w).sum() for i, (q, w) in enumerate(zip(inputs, weights))),
                                        list(gen.left))
    lors.balance_shared_gradients(gen)
    for i, q in enumerate(inputs):
        assert torch.equal(gen(q, i), before[i])
    for tensor in (gen.shared.weight, gen.shared.bias):
        gen.grad_balance = GradBalance(3, beta=0.0)  # fresh running norms: the last step's norms
        g = per_layer_grads(gen, inputs, weights, tensor)
        torch.testing.assert_close(balanced_grad(gen, inputs, weights, tensor), sum(g))  # step 1: plain sum
        got = balanced_grad(gen, inputs, weights, tensor)  # step 2, same data: scaled by step 1's norms
        torch.testing.assert_close(got, expected(g, [float(t.norm()) for t in g]), rtol=1e-5, atol=1e-10)
    private = torch.autograd.grad(sum((gen(q, i) * w).sum() for i, (q, w) in enumerate(zip(inputs, weights))),
                                  list(gen.left))
    for a, b in zip(private, plain_private):
        torch.testing.assert_close(a, b)


def test_a_layer_with_zero_gradient_stays_zero_and_is_left_out_of_the_mean():
    stack = lors.LorsLinearStack(3, 4, 4, rank=1, dtype=torch.float64)
    lors.balance_shared_gradients(stack)
    inputs = [torch.randn(2, 4, dtype=torch.float64) for _ in range(3)]
    weights = [torch.randn(2, 4, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64),
               3 * torch.randn(2, 4, dtype=torch.float64)]
    g = per_layer_grads(stack, inputs, weights, stack.shared_weight)
    balanced_grad(stack, inputs, weights, stack.shared_weight)
    got = balanced_grad(stack, inputs, weights, stack.shared_weight)
    assert torch.isfinite(got).all() and stack.grad_balance.norms["shared_weight"][1] == 0
    torch.testing.assert_close(got, expected(g, [float(t.norm()) for t in g]))


def test_no_grad_and_frozen_tensors_pass_through():
    stack = lors.LorsLinearStack(2, 4, 4, rank=1)
    lors.balance_shared_gradients(stack)
    with torch.no_grad():
        stack(torch.randn(3, 4), 0)
    stack.shared_weight.requires_grad_(False)
    stack(torch.randn(3, 4), 1).sum().backward()
    assert stack.grad_balance.norms == {}  # nothing was recorded


def test_switches_every_stack_of_a_model_and_none_of_a_dense_one():
    mixer = mixing(num_stages=3, dim=8, n_groups=2, in_points=4, out_points=4,
                            variant="lors", core_size=2, core_groups=1, out_rank=2)
    assert lors.balance_shared_gradients(mixer) == 3  # M and S generators, out projection
    assert all(isinstance(m.grad_balance, GradBalance) and m.grad_balance.num_layers == 3
               for m in (mixer.m_generator, mixer.s_generator, mixer.out_proj))
    dense = mixing(num_stages=3, dim=8, n_groups=2, in_points=4, out_points=4)
    assert lors.balance_shared_gradients(dense) == 0
    assert sorted(mixer.state_dict()) == sorted(mixing(
        num_stages=3, dim=8, n_groups=2, in_points=4, out_points=4, variant="lors", core_size=2,
        core_groups=1, out_rank=2).state_dict())  # nothing new is saved


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        GradBalance(3, beta=1.0)
    with pytest.raises(ValueError, match="num_layers"):
        GradBalance(0)


def test_config_key_and_engine(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  shared_grad_balance: maybe\n")
    with pytest.raises(ConfigError, match="train.shared_grad_balance"):
        load_config(f)
    cfg = load_config(None, ["model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=32",
                             "model.patch_size=4", "model.variant=lors", "model.rank=2", "train.epochs=1",
                             "train.progress=false", "train.shared_grad_balance=true"])
    built = []

    def build():
        built.append(build_vit(cfg.model))
        return built[-1]

    exp = build_experiment(cfg)
    exp.build_model = build
    run_training(cfg, tmp_path / "run", log=lambda s: None, experiment=exp)
    stacks = [m for m in built[0].modules() if isinstance(m, lors.LorsLinearStack)]
    assert stacks and all(isinstance(m.grad_balance, GradBalance) for m in stacks)
    for m in stacks:  # the training steps went through the balancing: every layer has a running norm
        assert (m.grad_balance.norms["shared_weight"] > 0).all()


def test_converted_attention_in_projection_is_balanced_too():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    enc = lors.convert(nn.TransformerEncoder(layer, 3, enable_nested_tensor=False), lors.LorsConfig(rank=1))
    assert lors.balance_shared_gradients(enc) == 4  # in-projection, out-projection, linear1, linear2
    for _ in range(2):  # the first pass's norms are folded into the running ones when the second begins
        enc(torch.randn(2, 5, 8)).square().sum().backward()
    stacks = [m for m in enc.modules() if isinstance(m, lors.LorsLinearStack)]
    for m in stacks:  # every stack, the attention in-projection (read through .weight(i)) included, saw 3 layers
        assert (m.grad_balance.norms["shared_weight"] > 0).all()
