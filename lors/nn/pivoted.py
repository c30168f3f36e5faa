"""A rank-r linear layer stored in ``r (in + out - r)`` numbers instead of ``r (in + out)``.

Any rank-r matrix ``W = A B`` (A: out x r, B: r x in) can be written with an identity block: pick r
columns of ``B`` that form an invertible ``B_1`` (the *pivots*), then

    W P = A [B_1  B_2] = (A B_1) [I  B_1^{-1} B_2],      U = A B_1 (out, r),  V = B_1^{-1} B_2 (r, in - r)

where ``P`` orders the input features pivots first. The identity is not stored, so a rank-r layer costs
``r (in + out - r)`` numbers: the same matrix as :class:`~lors.LowRankLinear` at rank r, with ``r^2`` fewer
numbers (at a fixed budget, a higher rank: a 576 x 576 matrix kept at 80 % holds rank 318 this way and
rank 230 as ``U V``). It also costs fewer multiply-adds per token. The forward pass is

    z = x[..., pivots] + x[..., rest] V^T      # (..., r): two gathers and one addmm
    y = z U^T + b                              # (..., out)

The factors are first rewritten as ``A B = (A R^T) Q^T`` with ``B^T = Q R`` (QR), so that ``B`` has orthonormal
rows even when the given ``B`` is rank-deficient (dead input features, a weight of lower rank than r). Pivots are
then chosen by LU with partial pivoting of ``Q`` (float64), which keeps every entry of its ``L`` factor at most 1
and ``B_1`` invertible and well conditioned. The
factors train like ``U V`` (the pivot choice stays fixed); :meth:`to_dense` and ``weight`` give ``W``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .checks import factor_sizes, last_dim


def pivoted_rank(shape: tuple[int, int], budget: float) -> int:
    """The largest r with ``r (out + in - r) <= budget`` (at most min(out, in); 0 if even rank 1 does not fit)."""
    out_f, in_f = shape
    s = out_f + in_f
    disc = max(s * s - 4.0 * budget, 0.0)
    r = min(int((s - disc ** 0.5) / 2), min(shape))
    while r + 1 <= min(shape) and (r + 1) * (s - r - 1) <= budget:  # float rounding of the root
        r += 1
    while r > 0 and r * (s - r) > budget:
        r -= 1
    return r


class PivotedLowRankLinear(nn.Module):
    """Linear layer ``y = x (U [I V] P)^T + b`` of rank r: U (out, r), V (r, in - r), ``pivots`` (in,) a
    permutation of the input features (the first r carry the identity block). See the module docstring.

    Build one from factors with :meth:`from_factors` (or from a :class:`~lors.LowRankLinear` with
    :meth:`from_lowrank`); the constructor makes an untrained layer whose pivots are the first r inputs.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, rank = factor_sizes(in_features, out_features, rank)
        kw = dict(device=device, dtype=dtype)
        self.U = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.V = nn.Parameter(torch.zeros(rank, in_features - rank, **kw))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, **kw))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("pivots", torch.arange(in_features, device=device))

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        """The dense matrix (out, in)."""
        return self._assemble(self.U, self.V)

    def _assemble(self, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``[U  U V]`` with its columns put back in input order: the dense (out, in) matrix."""
        r = self.rank
        W = U.new_empty(self.out_features, self.in_features)
        W[:, self.pivots[:r]] = U
        W[:, self.pivots[r:]] = U @ V
        return W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        last_dim(x, self.in_features, type(self).__name__)
        r, rows = self.rank, x.reshape(-1, self.in_features)    # (N, in)
        # two gathers and one fused multiply-add: cheaper than permuting all of x and adding (measured)
        z = torch.addmm(rows.index_select(1, self.pivots[:r]), rows.index_select(1, self.pivots[r:]),
                        self.V.t())                             # (N, r) = x_p + x_rest V^T
        return F.linear(z, self.U, self.bias).view(*x.shape[:-1], self.out_features)  # (..., out)

    def num_stored(self) -> int:
        """Parameters stored: r (in + out - r) (+ out for the bias); the pivots are in indices."""
        return self.rank * (self.in_features + self.out_features - self.rank) + \
            (0 if self.bias is None else self.out_features)

    def num_dense(self) -> int:
        return self.in_features * self.out_features + (0 if self.bias is None else self.out_features)

    @classmethod
    @torch.no_grad()
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     dtype: Optional[torch.dtype] = None) -> "PivotedLowRankLinear":
        """The layer computing ``x (A B)^T + bias`` for A (out, r), B (r, in) of full rank r (float64 inside)."""
        (out_f, r), in_f = A.shape, B.shape[1]
        if B.shape[0] != r:
            raise ValueError(f"factors do not chain: A is {tuple(A.shape)}, B is {tuple(B.shape)}")
        A64, B64 = A.detach().double(), B.detach().double()
        Q, R = torch.linalg.qr(B64.T)                           # B^T = Q R, Q (in, r) orthonormal
        A64, B64 = A64 @ R.T, Q.T                               # A B = (A R^T) Q^T: B now has full row rank r
        P = torch.linalg.lu(Q).P                                # Q = P L U: P's columns order the rows of Q
        order = P.argmax(0)                                     # order[j]: the row of Q in position j
        B1, B2 = B64[:, order[:r]], B64[:, order[r:]]           # B1 = (L_1 U)^T: invertible, well conditioned
        layer = cls(in_f, out_f, r, bias=bias is not None, device=A.device, dtype=dtype or A.dtype)
        layer.U.copy_(A64 @ B1)
        layer.V.copy_(torch.linalg.solve(B1, B2))
        layer.pivots.copy_(order)
        if bias is not None:
            layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_lowrank(cls, layer: nn.Module) -> "PivotedLowRankLinear":
        """The same function as a :class:`~lors.LowRankLinear` (``U V``), in pivoted storage."""
        return cls.from_factors(layer.U, layer.V, layer.bias, dtype=layer.U.dtype)

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same function (weight formed in float64, then cast)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.U.device, dtype=self.U.dtype)
        lin.weight.copy_(self._assemble(self.U.double(), self.V.double()))
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, " \
               f"bias={self.bias is not None}"
