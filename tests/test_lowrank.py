import pytest
import torch
from torch import nn

from lors import LowRankLinear, count_parameters, rank_for_epsilon

pytestmark = pytest.mark.usefixtures("float64")


def matrix_with_spectrum(S, m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, len(S), generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, len(S), generator=g))
    return U @ torch.diag(torch.tensor(S)) @ V.T


def test_forward_and_gradients_match_dense_formula():
    torch.manual_seed(0)
    layer = LowRankLinear(9, 7, rank=3)
    x = torch.randn(4, 2, 9, requires_grad=True)
    y = layer(x)
    ref = x @ (layer.U @ layer.V).T + layer.bias
    assert torch.allclose(y, ref, atol=1e-8, rtol=0)
    params = [x, layer.U, layer.V, layer.bias]
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
        assert torch.allclose(a, b, atol=1e-8, rtol=0)


def test_from_dense_full_rank_round_trip():
    torch.manual_seed(1)
    lin = nn.Linear(6, 8)
    lr = LowRankLinear.from_dense(lin, rank=6)
    x = torch.randn(5, 6)
    assert torch.allclose(lr(x), lin(x), atol=1e-10)
    back = lr.to_dense()
    assert isinstance(back, nn.Linear)
    assert torch.allclose(back.weight, lin.weight, atol=1e-10) and torch.equal(back.bias, lin.bias)


def test_from_dense_balanced_factors():
    lin = nn.Linear(10, 6)
    lr = LowRankLinear.from_dense(lin, rank=4)
    S = torch.linalg.svdvals(lin.weight)[:4]
    assert torch.allclose(lr.U.T @ lr.U, torch.diag(S), atol=1e-10)
    assert torch.allclose(lr.V @ lr.V.T, torch.diag(S), atol=1e-10)


def test_epsilon_picks_known_rank():
    S = [10.0, 5.0, 2.0, 0.1, 0.05, 0.01]
    W = matrix_with_spectrum(S, 12, 9)
    total = sum(s * s for s in S)
    errs = [(sum(s * s for s in S[r:]) / total) ** 0.5 for r in range(len(S))]
    # errs = [1, 0.474, 0.176, 0.00988, 0.00449, 0.00088]: epsilon in (errs[r], errs[r-1]) selects r
    for eps, want in [(0.5, 1), (0.2, 2), (0.05, 3), (0.0099, 3), (0.009, 4), (0.001, 5), (0.0005, 6)]:
        assert rank_for_epsilon(torch.tensor(S), eps) == want, (eps, errs)
        lin = nn.Linear(9, 12, bias=False)
        with torch.no_grad():
            lin.weight.copy_(W)
        lr = LowRankLinear.from_dense(lin, epsilon=eps)
        assert lr.rank == want
        assert (lr.weight - W).norm() / W.norm() <= eps


def test_storage_counts():
    lr = LowRankLinear(30, 20, rank=5)
    assert count_parameters(lr) == lr.num_stored() == 5 * (30 + 20) + 20
    assert lr.num_dense() == 30 * 20 + 20


def test_reproject_preserves_product_and_balances():
    torch.manual_seed(2)
    lr = LowRankLinear(10, 8, rank=4)
    with torch.no_grad():
        lr.U.mul_(5.0)  # unbalance
        lr.V.div_(3.0)
    before = lr.weight.clone()
    assert lr.reproject() == 4
    assert torch.allclose(lr.weight, before, atol=1e-10)
    S = torch.linalg.svdvals(before)[:4]
    assert torch.allclose(lr.U.T @ lr.U, torch.diag(S), atol=1e-9)
    assert torch.allclose(lr.V @ lr.V.T, torch.diag(S), atol=1e-9)


def test_reproject_truncates_to_epsilon():
    W = matrix_with_spectrum([4.0, 3.0, 0.01, 0.001], 8, 7, seed=3)
    lin = nn.Linear(7, 8)
    with torch.no_grad():
        lin.weight.copy_(W)
    lr = LowRankLinear.from_dense(lin, rank=4)
    old_u = lr.U
    assert lr.reproject(epsilon=0.01) == 2
    assert lr.U is not old_u and lr.U.shape == (8, 2) and lr.V.shape == (2, 7)
    assert (lr.weight - W).norm() / W.norm() <= 0.01


@pytest.mark.parametrize("kw,field", [(dict(rank=0), "rank"), (dict(rank=7), "rank"),
                                      (dict(rank=None, epsilon=None), "exactly one"),
                                      (dict(rank=2, epsilon=0.1), "exactly one"),
                                      (dict(rank=None, epsilon=0.0), "epsilon"),
                                      (dict(rank=None, epsilon=1.0), "epsilon"),
                                      (dict(rank=None, epsilon=-0.5), "epsilon")])
def test_from_dense_errors(kw, field):
    with pytest.raises(ValueError, match=field):
        LowRankLinear.from_dense(nn.Linear(6, 9), **kw)


def test_constructor_and_shape_errors():
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(4, 3, rank=4)
    with pytest.raises(ValueError, match="last dimension 4"):
        LowRankLinear(4, 3, rank=2)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="epsilon"):
        LowRankLinear(4, 3, rank=2).reproject(epsilon=2.0)
