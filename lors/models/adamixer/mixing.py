"""AdaMixer's adaptive mixing for all decoder stages, dense or LORS-factorised.

Per query, stage ``s`` generates a channel-mixing matrix M (C_in/G x C_out/G) and
a spatial-mixing matrix S (out_points x in_points) for each of the G sampling
groups, mixes the sampled features with them, and projects the result back to
the query dimension:

    x (B, N, G, P_in, C) -> x @ M -> LN, ReLU -> S @ . -> LN, ReLU
      -> flatten -> out_proj -> LayerNorm(query + .)

``variant="dense"`` gives every stage its own generators and out projection (the
original AdaMixer). ``variant="lors"`` is the LORS paper's factorised mixing:
adaptive LORS for the M and S generators (one shared generator, per stage K_s
query-generated k x k cores with static left/right factors) and static LORS for
the out projection (shared weight, per-stage rank-``out_rank`` residual and bias).
The LayerNorm after the residual is per stage in both variants.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.adaptive import AdaptiveLors, GeneratorStack
from ...nn.checks import positive_int
from ...nn.static import LinearStack, LorsLinearStack

VARIANTS = ("dense", "lors")


class AdaptiveMixing(nn.Module):
    """Adaptive channel + spatial mixing for ``num_stages`` decoder stages.

    Args:
        num_stages: number of decoder stages sharing this operator's stacks.
        query_dim: size of the query content vector.
        in_dim: channels of the sampled features (C); split evenly over ``n_groups``.
        n_groups: sampling groups G (one M and one S per group).
        in_points: sampled points per group (P_in).
        out_points: points after spatial mixing (P_out).
        variant: ``"dense"`` or ``"lors"``.
        core_size: k, side of each query-generated core (``lors`` only).
        core_groups: K_s, number of cores per stage, int or list (``lors`` only).
        out_rank: rank of each stage's out-projection residual, int or list (``lors`` only).
        factor_init: init of the adaptive left/right factors, ``"matrix"`` or ``"official"``
            (see :class:`~lors.AdaptiveLors`; ``lors`` only).
        stage_bias: give each stage's M and S generators a private full bias next to the shared
            generator's (``layer_bias`` of :class:`~lors.AdaptiveLors`; ``lors`` only).
        stage_bias_init: ``"zero"`` or ``"random"`` (each stage's bias drawn as a dense stage's
            generator bias; ``layer_bias_init`` of :class:`~lors.AdaptiveLors`; needs ``stage_bias``).
    """

    def __init__(self, num_stages: int = 6, query_dim: int = 256, in_dim: int = 256, n_groups: int = 4,
                 in_points: int = 32, out_points: int = 128, variant: str = "dense", core_size: int = 16,
                 core_groups: int | Sequence[int] = (1, 1, 2, 2, 3, 3), out_rank: int | Sequence[int] = 8,
                 factor_init: str = "official", stage_bias: bool = False, stage_bias_init: str = "zero"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        positive_int(n_groups, "n_groups")
        if in_dim % n_groups:
            raise ValueError(f"in_dim={in_dim} must be divisible by n_groups={n_groups}")
        self.num_stages, self.query_dim, self.n_groups = num_stages, query_dim, n_groups
        self.in_points, self.out_points = in_points, out_points
        self.channels = in_dim // n_groups  # per-group channels, in and out
        self.variant = variant
        proj_in = self.channels * out_points * n_groups
        if variant == "dense":
            self.m_generator = GeneratorStack(num_stages, query_dim, self.channels, self.channels, n_groups)
            self.s_generator = GeneratorStack(num_stages, query_dim, out_points, in_points, n_groups)
            self.out_proj = LinearStack(num_stages, proj_in, query_dim)
        else:
            self.m_generator = AdaptiveLors(num_stages, query_dim, self.channels, self.channels,
                                            rank=core_size, groups=core_groups, param_groups=n_groups,
                                            factor_init=factor_init, layer_bias=stage_bias,
                                            layer_bias_init=stage_bias_init)
            self.s_generator = AdaptiveLors(num_stages, query_dim, out_points, in_points,
                                            rank=core_size, groups=core_groups, param_groups=n_groups,
                                            factor_init=factor_init, layer_bias=stage_bias,
                                            layer_bias_init=stage_bias_init)
            self.out_proj = LorsLinearStack(num_stages, proj_in, query_dim, rank=out_rank)
        self.norms = nn.ModuleList([nn.LayerNorm(query_dim) for _ in range(num_stages)])

    def forward(self, x: torch.Tensor, query: torch.Tensor, stage: int) -> torch.Tensor:
        """x (B, N, G, P_in, C/G) sampled features, query (B, N, d_q) -> (B, N, d_q)."""
        B, N = query.shape[:2]
        expected = (B, N, self.n_groups, self.in_points, self.channels)
        if tuple(x.shape) != expected:
            raise ValueError(f"x must have shape (B, N, G, P_in, C/G) = {expected}, got {tuple(x.shape)}")
        M = self.m_generator(query, stage)  # (B, N, G, C/G, C/G)
        S = self.s_generator(query, stage)  # (B, N, G, P_out, P_in)
        out = x @ M  # (B, N, G, P_in, C/G)
        out = F.relu(F.layer_norm(out, out.shape[-2:]))
        out = S @ out  # (B, N, G, P_out, C/G)
        out = F.relu(F.layer_norm(out, out.shape[-2:]))
        out = self.out_proj(out.flatten(2), stage)  # (B, N, d_q)
        return self.norms[stage](query + out)
