"""LCT: low-rank compressible training with factorised linear layers.

A weight is held as ``W = U @ V`` (U: out x r, V: r x in) and trained in that
form. SVD moves a dense layer into factored form (:meth:`LowRankLinear.from_dense`)
and back (:meth:`LowRankLinear.to_dense`); a tolerance epsilon picks the smallest
rank whose relative Frobenius error stays under it (:func:`~lors.nn.spectral.rank_for_epsilon`);
:meth:`LowRankLinear.reproject` re-balances (and optionally re-truncates) the
factors during training. Storage is ``r * (in + out)`` instead of ``in * out``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .checks import epsilon_in_range, factor_sizes, last_dim, positive_int, rank_fits
from .spectral import balanced_svd, whitened_svd


class LowRankLinear(nn.Module):
    """Linear layer ``y = x (U V)^T + b`` with factors U (out, r) and V (r, in).

    Args:
        in_features, out_features: layer sizes.
        rank: r, 1 <= r <= min(in_features, out_features).
        bias: learn an additive bias.

    Init: V as ``nn.Linear`` would initialise an (r, in) weight and U as one of
    shape (out, r), i.e. Kaiming-uniform on each factor. Use
    :meth:`from_dense` to start from a trained layer instead.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, rank = factor_sizes(in_features, out_features, rank)
        kw = dict(device=device, dtype=dtype)
        self.U = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.V = nn.Parameter(torch.empty(rank, in_features, **kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.V, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.U, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def reset_spectral_(self) -> "LowRankLinear":
        """Spectral init (Khodak et al., 2021): draw the dense weight ``nn.Linear`` would start from and keep its
        balanced rank-r truncation, ``U = P_r sqrt(S_r)``, ``V = sqrt(S_r) Q_r^T`` (float64 SVD). Returns self."""
        dense = torch.empty(self.out_features, self.in_features, dtype=torch.float64, device=self.U.device)
        nn.init.kaiming_uniform_(dense, a=math.sqrt(5))
        U, V = balanced_svd(dense, self.rank, None)
        self.U.copy_(U)
        self.V.copy_(V)
        return self

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        """The dense product U @ V (out, in)."""
        return self.U @ self.V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out), computed as (x V^T) U^T."""
        last_dim(x, self.in_features, type(self).__name__)
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def num_stored(self) -> int:
        """Parameters stored: r (in + out) (+ out for the bias)."""
        return self.rank * (self.in_features + self.out_features) + (0 if self.bias is None else self.out_features)

    def num_dense(self) -> int:
        """Parameters the dense layer would store: in * out (+ out)."""
        return self.in_features * self.out_features + (0 if self.bias is None else self.out_features)

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: Optional[int] = None,
                   epsilon: Optional[float] = None) -> "LowRankLinear":
        """Factorise ``linear`` by truncated SVD.

        Give exactly one of ``rank`` (keep r singular values) or ``epsilon``
        (smallest rank with relative Frobenius error <= epsilon). Factors are
        balanced: U = U_r sqrt(S_r), V = sqrt(S_r) V_r^T. Computed in float64.
        """
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls.from_weight(linear.weight, linear.bias, rank, epsilon)

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, rank: Optional[int] = None,
                    epsilon: Optional[float] = None, input_moment: Optional[torch.Tensor] = None) -> "LowRankLinear":
        """Like :meth:`from_dense`, from a weight matrix (out, in) and an optional bias (out,).

        With ``input_moment`` (``E[x x^T]`` of calibration inputs, (in, in)) the factors minimise the
        error of the layer's outputs on such inputs, and ``epsilon`` bounds the relative output error
        (see :mod:`lors.nn.spectral`). Exact at full rank either way.
        """
        if (rank is None) == (epsilon is None):
            raise ValueError("give exactly one of rank= or epsilon= (got "
                             f"rank={rank!r}, epsilon={epsilon!r})")
        out_f, in_f = weight.shape
        if rank is not None:
            positive_int(rank, "rank")
            rank_fits([rank], out_f, in_f)
        else:
            epsilon_in_range(epsilon)
        if input_moment is None:
            U, V = balanced_svd(weight.detach().double(), rank, epsilon)
        else:
            Uw, sig, Vw = whitened_svd(weight, input_moment, rank, epsilon)
            U, V = Uw * sig.sqrt(), sig.sqrt()[:, None] * Vw
        layer = cls(in_f, out_f, U.shape[1], bias=bias is not None, device=weight.device, dtype=weight.dtype)
        layer.U.copy_(U)
        layer.V.copy_(V)
        if bias is not None:
            layer.bias.copy_(bias)
        return layer

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same function (weight = U @ V, in float64 then cast)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.U.device, dtype=self.U.dtype)
        lin.weight.copy_(self.U.double() @ self.V.double())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin

    @torch.no_grad()
    def reproject(self, epsilon: Optional[float] = None) -> int:
        """Re-balance the factors through an SVD of U @ V; optionally truncate to ``epsilon``.

        Without ``epsilon`` the product U @ V is unchanged (to float rounding) and the
        factors become balanced (U^T U = V V^T = diag(S)). With ``epsilon`` the rank may
        shrink to the smallest one meeting the tolerance. Uses QR of both factors, so
        the cost is O((in + out) r^2), never a dense SVD.

        If the rank changes, U and V become new ``nn.Parameter`` objects: rebuild the
        optimizer (its state refers to the old tensors). Returns the new rank.
        """
        if epsilon is not None:
            epsilon_in_range(epsilon)
        Qu, Ru = torch.linalg.qr(self.U.double())  # U = Qu Ru
        Qv, Rv = torch.linalg.qr(self.V.double().T)  # V^T = Qv Rv
        core = Ru @ Rv.T  # U V = Qu (Ru Rv^T) Qv^T, core is r x r
        Uc, Vc = balanced_svd(core, None if epsilon is not None else self.rank, epsilon)
        U, V = Qu @ Uc, Vc @ Qv.T
        if U.shape[1] == self.rank:
            self.U.copy_(U)
            self.V.copy_(V)
        else:
            self.U = nn.Parameter(U.to(self.U.dtype), requires_grad=self.U.requires_grad)
            self.V = nn.Parameter(V.to(self.V.dtype), requires_grad=self.V.requires_grad)
        return self.rank

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")


def frobenius_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over the model's LowRankLinear layers of ||U V||_F^2, computed as sum((U^T U) * (V V^T)).

    Costs O(r^2 (in + out)) per layer. Used as "Frobenius decay" in place of plain
    weight decay on U and V (which penalises ||U||^2 + ||V||^2, not the product).
    """
    terms = [((m.U.T @ m.U) * (m.V @ m.V.T)).sum() for m in model.modules() if isinstance(m, LowRankLinear)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def spectral_init(model: nn.Module) -> int:
    """:meth:`LowRankLinear.reset_spectral_` on every LCT layer of ``model``; returns how many."""
    layers = low_rank_layers(model)
    for layer in layers:
        layer.reset_spectral_()
    return len(layers)


def low_rank_layers(model: nn.Module) -> list[LowRankLinear]:
    return [m for m in model.modules() if isinstance(m, LowRankLinear)]
