import copy

import pytest
import torch
from torch import nn

from lors import LinearStack, LorsLinearStack, count_parameters, static_lors_params

pytestmark = pytest.mark.usefixtures("float64")


def random_stack(N=4, d_in=12, d_out=10, rank=(2, 3, 1, 2), groups=(1, 2, 3, 1), bias=True, seed=0):
    torch.manual_seed(seed)
    s = LorsLinearStack(N, d_in, d_out, rank=list(rank), groups=list(groups), bias=bias)
    with torch.no_grad():  # non-trivial residuals and biases (B and bias start at zero)
        for b in s.B:
            b.normal_()
        if bias:
            s.bias.normal_()
    return s


def dense_formula(s, i):
    W = s.shared_weight.clone()
    for k in range(s.groups[i]):
        W = W + s.B[i][k] @ s.A[i][k]
    return W


@pytest.mark.parametrize("path", ["materialize", "lowrank"])
def test_forward_and_gradients_match_dense_formula(path):
    s = random_stack()
    s.path = path
    x = torch.randn(3, 5, s.in_features, requires_grad=True)
    for i in range(s.num_layers):
        y = s(x, i)
        ref = x @ dense_formula(s, i).T + s.bias[i]
        assert torch.allclose(y, ref, atol=1e-8, rtol=0)
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, [x, s.shared_weight, s.A[i], s.B[i], s.bias], g)
        grads_ref = torch.autograd.grad(ref, [x, s.shared_weight, s.A[i], s.B[i], s.bias], g)
        for a, b in zip(grads, grads_ref):
            assert torch.allclose(a, b, atol=1e-8, rtol=0)


def test_both_paths_agree_float32():
    torch.manual_seed(1)
    s = random_stack().float()
    x = torch.randn(7, s.in_features, dtype=torch.float32)
    for i in range(s.num_layers):
        s.path = "materialize"
        a = s(x, i)
        s.path = "lowrank"
        b = s(x, i)
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_auto_path_picks_cheaper_by_flops():
    s = LorsLinearStack(2, 64, 32, rank=4)
    # lowrank is cheaper iff T (d_in + d_out) < d_in d_out  <=>  T < 64*32/96 = 21.3
    assert s.uses_lowrank_path(0, tokens=21)
    assert not s.uses_lowrank_path(0, tokens=22)


def test_paper_init_every_layer_equals_shared():
    s = LorsLinearStack(3, 8, 6, rank=2, groups=[1, 2, 1])
    x = torch.randn(4, 8)
    shared = x @ s.shared_weight.T
    for i in range(3):
        assert torch.equal(s(x, i), shared)
        assert s.A[i].abs().sum() > 0 and s.B[i].abs().sum() == 0
    assert s.bias.abs().sum() == 0


def test_parameter_count_closed_form_independent():
    N, d_in, d_out, ranks, groups = 4, 12, 10, [2, 3, 1, 2], [1, 2, 3, 1]
    s = random_stack(N, d_in, d_out, ranks, groups)
    expected = d_out * d_in + sum(k * r * (d_in + d_out) for r, k in zip(ranks, groups)) + N * d_out
    assert count_parameters(s) == expected == static_lors_params(N, d_in, d_out, ranks, groups)
    s2 = LorsLinearStack(N, d_in, d_out, rank=3, groups=2, bias=False)
    assert count_parameters(s2) == d_out * d_in + N * 2 * 3 * (d_in + d_out)


def test_to_dense_round_trip():
    s = random_stack()
    dense = s.to_dense()
    x = torch.randn(6, s.in_features)
    for i, lin in enumerate(dense):
        assert isinstance(lin, nn.Linear)
        assert torch.allclose(lin(x), s(x, i), atol=1e-10)


def test_from_linears_full_rank_is_exact_and_to_dense_round_trips():
    torch.manual_seed(2)
    lins = [nn.Linear(6, 5) for _ in range(3)]
    s = LorsLinearStack.from_linears(lins, rank=5)  # rank(W_i - mean) <= 5 = min(d_in, d_out)
    mean = torch.stack([l.weight for l in lins]).mean(0)
    assert torch.allclose(s.shared_weight, mean, atol=1e-12)
    x = torch.randn(4, 6)
    for i, (lin, back) in enumerate(zip(lins, s.to_dense())):
        assert torch.allclose(s(x, i), lin(x), atol=1e-10)
        assert torch.allclose(back.weight, lin.weight, atol=1e-10)
        assert torch.allclose(back.bias, lin.bias)


def test_from_linears_groups_split_the_svd_and_truncation_is_optimal():
    torch.manual_seed(3)
    lins = [nn.Linear(8, 8, bias=False) for _ in range(3)]
    s = LorsLinearStack.from_linears(lins, rank=2, groups=2)  # residual rank 4 in two groups of 2
    mean = torch.stack([l.weight for l in lins]).mean(0)
    for i, lin in enumerate(lins):
        residual = lin.weight - mean
        U, S, Vh = torch.linalg.svd(residual)
        best = (U[:, :4] * S[:4]) @ Vh[:4]
        assert torch.allclose(s.weight(i) - s.shared_weight, best, atol=1e-10)
        assert s.A[i].shape == (2, 2, 8) and s.B[i].shape == (2, 8, 2)


def test_stack_layer_view_registers_shared_weight_once():
    s = LorsLinearStack(3, 4, 4, rank=1)
    owner = nn.Module()
    owner.stack = s
    owner.blocks = nn.ModuleList([s.layer(i) for i in range(3)])
    names = [n for n, _ in owner.named_parameters()]
    assert names.count("stack.shared_weight") == 1 and not any(n.startswith("blocks") for n in names)
    assert list(owner.state_dict().keys()) == [n for n in owner.state_dict() if n.startswith("stack.")]
    x = torch.randn(2, 4)
    assert torch.equal(owner.blocks[1](x), s(x, 1))
    assert torch.equal(owner.blocks[1].weight, s.weight(1))


def test_linear_stack_interface():
    d = LinearStack(3, 5, 2)
    x = torch.randn(4, 5)
    assert torch.allclose(d(x, 2), d.layers[2](x))
    assert count_parameters(d) == 3 * (5 * 2 + 2)


def test_from_linears_identical_layers_residuals_still_train():
    lin = nn.Linear(6, 4)
    s = LorsLinearStack.from_linears([lin, copy.deepcopy(lin)], rank=2)
    assert all(b.abs().sum() == 0 for b in s.B) and all(a.abs().sum() > 0 for a in s.A)
    s(torch.randn(3, 6), 1).sum().backward()
    assert s.B[1].grad.abs().sum() > 0
