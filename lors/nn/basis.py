"""Basis sharing: stacked linear layers that share one output basis (after Basis Sharing, Wang et al. 2024).

Layer ``i`` of a stack of ``N`` computes ``y = U (A_i x) + b_i`` with

    W_i = U @ A_i        U: (d_out, k) shared, orthonormal columns at fit;  A_i: (k, d_in) per layer

Fitted to pretrained layers with input moments ``C_i = E[x x^T]``, the basis minimising
``sum_i ||(W_i - U A_i) S_i||_F^2`` (``S_i = C_i^{1/2}``) comes from one truncated SVD of the
whitened weights side by side, ``[W_1 S_1 | ... | W_N S_N] = P Sigma Q^T``: ``U = P_k`` and
``A_i = U^T W_i`` (for an orthonormal ``U`` the best ``A_i`` does not depend on ``C_i``).
At ``k = d_out`` the fit is exact. Stored: ``d_out k + N k d_in`` numbers instead of ``N d_out d_in``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checks import last_dim, positive_int
from .spectral import whitener
from .stack import SharedStack


class BasisSharedStack(SharedStack):
    """``num_layers`` linear maps ``in_features -> out_features`` of rank ``rank`` sharing their output basis.

    Parameters (``state_dict`` keys): ``basis`` (d_out, k), ``coefficients`` (N, k, d_in), ``bias`` (N, d_out).
    """

    shared_tensors = ("basis",)
    private_tensors = ("coefficients",)

    def __init__(self, num_layers: int, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.num_layers = positive_int(num_layers, "num_layers")
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.rank = positive_int(rank, "rank")
        if rank > out_features:
            raise ValueError(f"basis rank {rank} exceeds out_features {out_features}; allowed: 1..{out_features}")
        kw = dict(device=device, dtype=dtype)
        self.basis = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.coefficients = nn.Parameter(torch.empty(num_layers, rank, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_layers, out_features, **kw)) if bias else None
        with torch.no_grad():
            nn.init.orthogonal_(self.basis)
            nn.init.normal_(self.coefficients, std=in_features ** -0.5)

    @property
    def ranks(self) -> list[int]:
        return [self.rank] * self.num_layers

    def weight(self, i: int) -> torch.Tensor:
        """Effective dense weight W_i = U A_i (d_out, d_in)."""
        return self.basis @ self.coefficients[i]

    def layer_bias(self, i: int):
        return None if self.bias is None else self.bias[i]

    def forward(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Apply layer ``i``: x (..., d_in) -> (..., d_out) as ``U (A_i x)``."""
        last_dim(x, self.in_features, f"{type(self).__name__} layer {i}")
        return F.linear(F.linear(x, self.coefficients[i]), self.basis, self.layer_bias(i))

    @torch.no_grad()
    def refit_layer(self, i: int, target: torch.Tensor, moment: Optional[torch.Tensor] = None) -> None:
        """Set ``A_i`` to the best coefficients for ``target`` (d_out, d_in) in the current (orthonormal) basis
        (on any inputs: for an orthonormal basis the whitened least squares does not depend on ``moment``)."""
        self.coefficients[i].copy_(self.basis.double().T @ target.double())

    @classmethod
    @torch.no_grad()
    def from_weights(cls, weights: Sequence[torch.Tensor], biases: Optional[Sequence[torch.Tensor]], rank: int,
                     input_moments: Optional[Sequence[Optional[torch.Tensor]]] = None) -> "BasisSharedStack":
        """The stack of rank ``rank`` closest to ``weights`` (on the outputs, with ``input_moments``). Float64."""
        shapes = {tuple(w.shape) for w in weights}
        if len(shapes) != 1:
            raise ValueError(f"weights must all have the same shape, got {sorted(shapes)}")
        out_f, in_f = shapes.pop()
        ref = weights[0]
        stack = cls(len(weights), in_f, out_f, rank, bias=biases is not None, device=ref.device, dtype=ref.dtype)
        w64 = [w.detach().double() for w in weights]
        moments = input_moments or [None] * len(w64)
        side_by_side = torch.cat([w if C is None else w @ whitener(C)[0] for w, C in zip(w64, moments)], 1)
        U = torch.linalg.svd(side_by_side, full_matrices=False)[0][:, :rank]  # (d_out, k)
        stack.basis.copy_(U)
        for i, w in enumerate(w64):
            stack.refit_layer(i, w)
            if biases is not None:
                stack.bias[i].copy_(biases[i])
        return stack

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")
