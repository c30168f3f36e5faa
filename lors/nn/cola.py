"""CoLA: a low-rank linear map with a nonlinearity between its factors, ``y = B σ(A x) + b``.

CoLA (Liu et al., 2025) replaces each full-rank weight of a transformer by two rank-``r`` factors with an
activation in between and matches full-rank pre-training at about half the parameters: unlike ``U V``
(:class:`~lors.nn.lowrank.LowRankLinear`), the map is not a rank-r matrix but a small bottleneck MLP, so
it cannot be merged into one dense weight. Offered as the model variant ``cola`` (trained from scratch).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .checks import last_dim, positive_int, rank_fits

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


class CoLALinear(nn.Module):
    """x (..., in_features) -> B σ(A x) + b (..., out_features), A (rank, in), B (out, rank).

    Stores ``rank (in + out)`` numbers (+ ``out`` for the bias), the same as a rank-``rank``
    :class:`~lors.LowRankLinear`. Init: A Kaiming-uniform for its fan-in; B uniform with bound
    ``1/sqrt(rank)`` (an ``nn.Linear`` of fan-in ``rank``), bias as ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 activation: str = "silu", device=None, dtype=None):
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.rank = positive_int(rank, "rank")
        rank_fits([rank], out_features, in_features)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        kw = dict(device=device, dtype=dtype)
        self.A = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.B = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.B, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(self.in_features), 1 / math.sqrt(self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last_dim(x, self.in_features, type(self).__name__)
        return F.linear(ACTIVATIONS[self.activation](F.linear(x, self.A)), self.B, self.bias)  # (..., r) -> (..., out)

    def num_stored(self) -> int:
        return self.rank * (self.in_features + self.out_features) + (0 if self.bias is None else self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"activation={self.activation!r}, bias={self.bias is not None}")
