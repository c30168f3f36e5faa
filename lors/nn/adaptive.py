"""Adaptive LORS (LORS_A): stacked generators of query-dependent matrices.

Some networks *generate* a weight from a query vector ``q`` (AdaMixer generates
a channel-mixing matrix M and a spatial-mixing matrix S for every query). With
``P`` parameter groups (AdaMixer: one matrix per sampling group), layer ``i`` of
a stack of N generators produces

    M_i(q)[p] = reshape(G_shared(q))[p] + sum_{k=1..K_i} L_ipk @ Z_ipk(q) @ R_ipk

where ``G_shared`` is a Linear ``d_q -> P*rows*cols`` shared by all layers,
``Z_i(q) = reshape(G_i(q))`` are the small query-generated cores (r_i x r_i,
``G_i`` a private Linear ``d_q -> P*K_i*r_i^2``), and ``L_ipk`` (rows x r_i),
``R_ipk`` (r_i x cols) are static parameters.

:class:`GeneratorStack` is the dense counterpart: one Linear ``d_q -> P*rows*cols``
per layer. Both return ``(..., P, rows, cols)`` from ``stack(q, i)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .checks import IntOrList, last_dim, per_layer, positive_int, rank_fits
from .stack import SharedStack

FACTOR_INITS = ("matrix", "official")
LAYER_BIAS_INITS = ("zero", "random")


def _set_dims(module: nn.Module, num_layers, query_dim, rows, cols, param_groups) -> None:
    """Validate and store the dimensions shared by both generator stacks."""
    module.num_layers = positive_int(num_layers, "num_layers")
    module.query_dim = positive_int(query_dim, "query_dim")
    module.rows = positive_int(rows, "rows")
    module.cols = positive_int(cols, "cols")
    module.param_groups = positive_int(param_groups, "param_groups")


class AdaptiveLors(SharedStack):
    """N generators ``q (..., d_q) -> M (..., P, rows, cols)`` sharing one generator.

    Args:
        num_layers: number of stacked generators N.
        query_dim: d_q, size of the query vector.
        rows, cols: shape of each generated matrix.
        rank: core size r_i (an int or a list of N ints).
        groups: number of cores K_i per layer (an int or a list of N ints).
        param_groups: P, number of matrices generated per query (leading dim).
        bias: give the generators biases.
        layer_bias: give each layer its own full bias, a query-independent offset of its generated
            matrices (``P*rows*cols`` parameters per layer). Without it a layer's static
            part differs from the others only through its rank-``K_i r_i`` cores.
        layer_bias_init: ``"zero"`` (default) starts every layer bias at zero, so all layers generate
            the same matrices at init; ``"random"`` draws each layer bias as ``nn.Linear`` draws a bias
            (uniform, bound 1/sqrt(d_q)) and zeroes the shared bias, so at init every layer's
            query-independent matrix is its own random draw, as in a dense :class:`GeneratorStack`.
        factor_init: how ``left``/``right`` are drawn (Kaiming-uniform, gain sqrt 2):
            ``"official"`` (default) the fan-in PyTorch computes for the official LORS code's 3-D
            tensors (rows*r for L, r*cols for R); ``"matrix"`` the fan-in of each 2-D factor
            (r for L, cols for R), a private path that starts sqrt(rows)*sqrt(r) times larger.
            The official init trained better in our detector ablation (RESULTS.md).

    Parameters: ``shared.weight`` (P*rows*cols, d_q), ``shared.bias``;
    ``private.{i}.weight`` (P*K_i*r_i^2, d_q), ``private.{i}.bias``;
    ``left.{i}`` (P, K_i, rows, r_i); ``right.{i}`` (P, K_i, r_i, cols);
    with ``layer_bias``, ``layer_bias.{i}`` (P*rows*cols,).

    Init as in the paper's code: shared generator weight zero (bias as
    ``nn.Linear``), private generator weight and bias zero, left/right factors
    Kaiming-uniform (see ``factor_init``). At init every layer therefore generates the same matrix.
    """

    shared_tensors = ("shared",)  # used by every layer
    private_tensors = ("private", "left", "right")  # per-layer low-rank residuals

    def __init__(self, num_layers: int, query_dim: int, rows: int, cols: int, rank: IntOrList,
                 groups: IntOrList = 1, param_groups: int = 1, bias: bool = True, factor_init: str = "official",
                 layer_bias: bool = False, layer_bias_init: str = "zero", device=None, dtype=None):
        super().__init__()
        _set_dims(self, num_layers, query_dim, rows, cols, param_groups)
        if factor_init not in FACTOR_INITS:
            raise ValueError(f"factor_init must be one of {FACTOR_INITS}, got {factor_init!r}")
        if layer_bias_init not in LAYER_BIAS_INITS:
            raise ValueError(f"layer_bias_init must be one of {LAYER_BIAS_INITS}, got {layer_bias_init!r}")
        if layer_bias_init == "random" and not (layer_bias and bias):
            raise ValueError("layer_bias_init='random' needs layer_bias=True and bias=True")
        self.factor_init, self.layer_bias_init = factor_init, layer_bias_init
        self.ranks = per_layer(rank, num_layers, "rank")
        self.groups = per_layer(groups, num_layers, "groups")
        rank_fits(self.ranks, rows, cols)
        kw = dict(device=device, dtype=dtype)
        P = param_groups
        self.shared = nn.Linear(query_dim, P * rows * cols, bias=bias, **kw)
        self.private = nn.ModuleList(
            [nn.Linear(query_dim, P * k * r * r, bias=bias, **kw) for r, k in zip(self.ranks, self.groups)])
        self.left = nn.ParameterList(
            [nn.Parameter(torch.empty(P, k, rows, r, **kw)) for r, k in zip(self.ranks, self.groups)])
        self.right = nn.ParameterList(
            [nn.Parameter(torch.empty(P, k, r, cols, **kw)) for r, k in zip(self.ranks, self.groups)])
        self.layer_bias = nn.ParameterList(
            [nn.Parameter(torch.empty(P * rows * cols, **kw)) for _ in range(num_layers)] if layer_bias else [])
        self.grad_balance = None  # see lors.balance_shared_gradients
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.shared.reset_parameters()  # default bias init
        nn.init.zeros_(self.shared.weight)
        for gen in self.private:
            nn.init.zeros_(gen.weight)
            if gen.bias is not None:
                nn.init.zeros_(gen.bias)
        # Kaiming-uniform (gain sqrt 2): fan-in of each 2-D factor, or of the official (K, rows, r) tensors.
        official = self.factor_init == "official"
        for L, R in zip(self.left, self.right):
            fan_l = L.shape[-2] * L.shape[-1] if official else L.shape[-1]
            fan_r = R.shape[-2] * R.shape[-1] if official else R.shape[-1]
            nn.init.uniform_(L, -math.sqrt(6.0 / fan_l), math.sqrt(6.0 / fan_l))
            nn.init.uniform_(R, -math.sqrt(6.0 / fan_r), math.sqrt(6.0 / fan_r))
        bound = 1.0 / math.sqrt(self.query_dim)  # nn.Linear's bias init
        for b in self.layer_bias:
            nn.init.uniform_(b, -bound, bound) if self.layer_bias_init == "random" else nn.init.zeros_(b)
        if self.layer_bias_init == "random":
            nn.init.zeros_(self.shared.bias)

    def cores(self, q: torch.Tensor, i: int) -> torch.Tensor:
        """Layer i's query-generated cores Z: (..., P, K_i, r_i, r_i)."""
        r, k = self.ranks[i], self.groups[i]
        return self.private[i](q).unflatten(-1, (self.param_groups, k, r, r))

    def shared_matrix(self, q: torch.Tensor, i: Optional[int] = None) -> torch.Tensor:
        """The shared generator's matrix: (..., P, rows, cols); ``i``: the layer using it (for ``grad_balance``)."""
        weight, bias = self.shared.weight, self.shared.bias
        if self.grad_balance is not None and i is not None:
            weight = self.grad_balance(weight, "shared.weight", i)
            bias = None if bias is None else self.grad_balance(bias, "shared.bias", i)
        return F.linear(q, weight, bias).unflatten(-1, (self.param_groups, self.rows, self.cols))

    def forward(self, q: torch.Tensor, i: int) -> torch.Tensor:
        """Generate layer i's matrices: q (..., d_q) -> (..., P, rows, cols)."""
        last_dim(q, self.query_dim, f"{type(self).__name__} layer {i}")
        if not 0 <= i < self.num_layers:
            raise IndexError(f"layer index {i} out of range for a stack of {self.num_layers} layers")
        P, k, r = self.param_groups, self.groups[i], self.ranks[i]
        Z = self.cores(q, i)  # (..., P, K, r, r)
        LZ = self.left[i] @ Z  # (..., P, K, rows, r)
        # Sum over the K groups inside one matmul: [L_1 Z_1 | ... | L_K Z_K] @ [R_1; ...; R_K]
        LZ = LZ.transpose(-3, -2).reshape(*LZ.shape[:-4], P, self.rows, k * r)  # (..., P, rows, K r)
        R = self.right[i].reshape(P, k * r, self.cols)  # (P, K r, cols)
        out = self.shared_matrix(q, i) + LZ @ R
        if len(self.layer_bias):
            out = out + self.layer_bias[i].view(P, self.rows, self.cols)
        return out

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, query_dim={self.query_dim}, rows={self.rows}, "
                f"cols={self.cols}, ranks={self.ranks}, groups={self.groups}, "
                f"param_groups={self.param_groups}")



class GeneratorStack(nn.Module):
    """Dense counterpart of :class:`AdaptiveLors`: one Linear ``d_q -> P*rows*cols`` per layer.

    Init as AdaMixer: generator weights zero, biases as ``nn.Linear``.
    """

    def __init__(self, num_layers: int, query_dim: int, rows: int, cols: int, param_groups: int = 1,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        _set_dims(self, num_layers, query_dim, rows, cols, param_groups)
        self.generators = nn.ModuleList(
            [nn.Linear(query_dim, param_groups * rows * cols, bias=bias, device=device, dtype=dtype)
             for _ in range(num_layers)])
        for gen in self.generators:
            nn.init.zeros_(gen.weight)

    def forward(self, q: torch.Tensor, i: int) -> torch.Tensor:
        """Generate layer i's matrices: q (..., d_q) -> (..., P, rows, cols)."""
        last_dim(q, self.query_dim, f"{type(self).__name__} layer {i}")
        return self.generators[i](q).unflatten(-1, (self.param_groups, self.rows, self.cols))

    def __len__(self) -> int:
        return self.num_layers
