import pytest
import torch

from lors import (AdaptiveLors, GeneratorStack, adaptive_lors_params, count_parameters, generator_stack_params,
                  param_groups)

pytestmark = pytest.mark.usefixtures("float64")


def random_adaptive(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(num_layers=3, query_dim=7, rows=5, cols=4, rank=[2, 3, 1], groups=[1, 2, 3], param_groups=2)
    args.update(kw)
    m = AdaptiveLors(**args)
    with torch.no_grad():  # leave the paper's zero init so the formula is exercised everywhere
        for p in m.parameters():
            p.normal_()
    return m


def dense_formula(m, q, i):
    """Loop-by-loop M_i(q)[p] = G_shared(q)[p] + sum_k L_pk Z_pk(q) R_pk, for one query vector."""
    P, K, r = m.param_groups, m.groups[i], m.ranks[i]
    shared = (m.shared.weight @ q + m.shared.bias).reshape(P, m.rows, m.cols)
    z = (m.private[i].weight @ q + m.private[i].bias).reshape(P, K, r, r)
    out = shared.clone()
    for p in range(P):
        for k in range(K):
            out[p] = out[p] + m.left[i][p, k] @ z[p, k] @ m.right[i][p, k]
    return out


def test_matches_dense_formula_outputs_and_gradients():
    m = random_adaptive()
    q = torch.randn(2, 3, m.query_dim, requires_grad=True)
    for i in range(m.num_layers):
        y = m(q, i)
        assert y.shape == (2, 3, m.param_groups, m.rows, m.cols)
        ref = torch.stack([torch.stack([dense_formula(m, q[b, n], i) for n in range(3)]) for b in range(2)])
        assert torch.allclose(y, ref, atol=1e-8, rtol=0)
        params = [q, m.shared.weight, m.private[i].weight, m.private[i].bias, m.left[i], m.right[i]]
        g = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
            assert torch.allclose(a, b, atol=1e-8, rtol=0)


def test_paper_init():
    m = AdaptiveLors(3, 6, 4, 5, rank=2, groups=[1, 2, 3], param_groups=2)
    q = torch.randn(10, 6)
    assert m.shared.weight.abs().sum() == 0 and m.shared.bias.abs().sum() > 0
    for i in range(3):
        assert m.private[i].weight.abs().sum() == 0 and m.private[i].bias.abs().sum() == 0
        assert m.left[i].abs().sum() > 0 and m.right[i].abs().sum() > 0
        # every layer generates the shared generator's (query-independent) matrix at init
        assert torch.equal(m(q, i), m.shared_matrix(q))
    # the private generators still receive gradient at init (L, R are non-zero)
    m(q, 2).pow(2).sum().backward()
    assert m.private[2].weight.grad.abs().sum() > 0


def test_parameter_counts_closed_form():
    N, dq, a, b, ranks, groups, P = 3, 7, 5, 4, [2, 3, 1], [1, 2, 3], 2
    m = random_adaptive()
    expected = (dq + 1) * P * a * b + sum((dq + 1) * P * k * r * r + P * k * r * (a + b) for r, k in zip(ranks, groups))
    assert count_parameters(m) == expected == adaptive_lors_params(N, dq, a, b, ranks, groups, P)
    d = GeneratorStack(N, dq, a, b, P)
    assert count_parameters(d) == N * (dq * P * a * b + P * a * b) == generator_stack_params(N, dq, a, b, P)


def test_layer_bias_adds_a_private_static_offset():
    N, dq, a, b, P = 3, 7, 5, 4, 2
    plain = random_adaptive(seed=1)
    m = random_adaptive(seed=1, layer_bias=True)
    assert count_parameters(m) - count_parameters(plain) == N * P * a * b
    assert count_parameters(m) == adaptive_lors_params(N, dq, a, b, [2, 3, 1], [1, 2, 3], P, layer_bias=True)
    assert all(t.abs().sum() == 0 for t in AdaptiveLors(N, dq, a, b, rank=1, layer_bias=True).layer_bias)
    q = torch.randn(6, dq)
    for i in range(N):
        ref = torch.stack([dense_formula(m, v, i) for v in q]) + m.layer_bias[i].view(P, a, b)
        assert torch.allclose(m(q, i), ref, atol=1e-8, rtol=0)
    m(q, 1).sum().backward()  # only layer 1's bias gets a gradient, one per generated entry
    assert torch.allclose(m.layer_bias[1].grad, torch.full((P * a * b,), 6.0))
    assert m.layer_bias[0].grad is None and m.layer_bias[2].grad is None
    groups = {g["name"]: {id(p) for p in g["params"]} for g in param_groups(m, 1e-3, 0.05)}
    assert {id(p) for p in m.layer_bias} <= groups["other/no_decay"]


def test_dense_generator_shapes_and_equivalence():
    d = GeneratorStack(2, 6, 3, 4, param_groups=2)
    with torch.no_grad():
        d.generators[1].weight.normal_()
    q = torch.randn(5, 6)
    y = d(q, 1)
    assert y.shape == (5, 2, 3, 4)
    assert torch.allclose(y.reshape(5, -1), q @ d.generators[1].weight.T + d.generators[1].bias)


@pytest.mark.parametrize("kw,field", [(dict(rank=0), "rank"), (dict(rank=[1, 2]), "rank"),
                                      (dict(groups=[1, 1]), "groups"), (dict(rank=6), "rank"),
                                      (dict(param_groups=0), "param_groups")])
def test_errors_name_the_argument(kw, field):
    args = dict(num_layers=3, query_dim=7, rows=5, cols=6, rank=2)
    args.update(kw)
    with pytest.raises(ValueError, match=field):
        AdaptiveLors(**args)


def test_wrong_query_shape():
    m = AdaptiveLors(2, 8, 3, 3, rank=1)
    with pytest.raises(ValueError, match="last dimension 8"):
        m(torch.randn(4, 7), 0)
