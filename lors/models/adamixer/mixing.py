"""AdaMixer's adaptive mixing for all decoder stages, dense or LORS-factorised.

Per query, stage ``s`` generates a channel-mixing matrix M (C_in/G x C_out/G) and
a spatial-mixing matrix S (out_points x in_points) for each of the G sampling
groups, mixes the sampled features with them, and projects the result back to
the query dimension:

    x (B, N, G, P_in, C) -> x @ M -> LN, ReLU -> S @ . -> LN, ReLU
      -> flatten -> out_proj -> LayerNorm(query + .)

``decoder: dense`` gives every stage its own generators and out projection (the
original AdaMixer). ``decoder: lors`` is the LORS paper's factorised mixing:
adaptive LORS for the M and S generators (one shared generator, per stage K_s
query-generated k x k cores with static left/right factors) and static LORS for
the out projection (shared weight, per-stage rank-``out_rank`` residual and bias).
:func:`build_mixing` builds either from a config; :class:`AdaptiveMixing` takes the stacks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.adaptive import AdaptiveLors, GeneratorStack
from ...nn.checks import positive_int
from ...nn.static import LinearStack, LorsLinearStack

VARIANTS = ("dense", "lors")


class AdaptiveMixing(nn.Module):
    """Adaptive channel + spatial mixing for the decoder stages, from ready generator stacks.

    Args:
        m_generator: the channel-mixing generator stack, ``(q, stage) -> (..., G, C/G, C/G)``
            (:class:`~lors.GeneratorStack` dense or :class:`~lors.AdaptiveLors`).
        s_generator: the spatial-mixing generator stack, ``(q, stage) -> (..., G, P_out, P_in)``.
        out_proj: the out-projection stack ``G P_out C/G -> d_q`` (:class:`~lors.LinearStack` or
            :class:`~lors.LorsLinearStack`).

    The sizes (stages, query_dim, G, C/G, P_in, P_out) are read off the stacks and checked against each
    other; :func:`build_mixing` makes the stacks from a config. The LayerNorm after the residual is per stage.
    """

    def __init__(self, m_generator: nn.Module, s_generator: nn.Module, out_proj: nn.Module):
        super().__init__()
        self.num_stages, self.query_dim = m_generator.num_layers, m_generator.query_dim
        self.n_groups, self.channels = m_generator.param_groups, m_generator.rows  # G, per-group channels
        self.out_points, self.in_points = s_generator.rows, s_generator.cols
        self.variant = "lors" if isinstance(m_generator, AdaptiveLors) else "dense"
        got = (s_generator.num_layers, s_generator.query_dim, s_generator.param_groups, m_generator.cols,
               out_proj.num_layers, out_proj.in_features, out_proj.out_features)
        want = (self.num_stages, self.query_dim, self.n_groups, self.channels, self.num_stages,
                self.channels * self.out_points * self.n_groups, self.query_dim)
        if got != want:
            raise ValueError(f"the mixing stacks do not fit together: (s stages, s query_dim, s groups, m cols, "
                             f"out stages, out in, out out) = {got}, expected {want}")
        self.m_generator, self.s_generator, self.out_proj = m_generator, s_generator, out_proj
        self.norms = nn.ModuleList([nn.LayerNorm(self.query_dim) for _ in range(self.num_stages)])

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


def build_mixing(cfg) -> AdaptiveMixing:
    """The adaptive mixing of an :class:`~lors.cli.config.AdaMixerConfig` (``decoder: dense | lors``).

    Dense: every stage its own generators and out projection (the original AdaMixer). LORS: adaptive LORS
    for the M and S generators (one shared generator; per stage ``core_groups`` query-generated
    ``core_size`` x ``core_size`` cores with static left/right factors, ``factor_init``, ``stage_bias``)
    and static LORS for the out projection (a rank-``out_rank`` residual and a bias per stage).
    """
    variant, S, d = cfg.decoder, cfg.num_stages, cfg.feat_channels
    if variant not in VARIANTS:
        raise ValueError(f"decoder must be one of {VARIANTS}, got {variant!r}")
    positive_int(cfg.n_groups, "n_groups")
    if d % cfg.n_groups:
        raise ValueError(f"feat_channels={d} must be divisible by n_groups={cfg.n_groups}")
    c, G = d // cfg.n_groups, cfg.n_groups
    proj_in = c * cfg.out_points * G
    if variant == "dense":
        return AdaptiveMixing(GeneratorStack(S, d, c, c, G), GeneratorStack(S, d, cfg.out_points, cfg.in_points, G),
                              LinearStack(S, proj_in, d))
    lors = dict(rank=cfg.core_size, groups=cfg.core_groups, param_groups=G, factor_init=cfg.factor_init,
                layer_bias=cfg.stage_bias, layer_bias_init=cfg.stage_bias_init)
    return AdaptiveMixing(AdaptiveLors(S, d, c, c, **lors), AdaptiveLors(S, d, cfg.out_points, cfg.in_points, **lors),
                          LorsLinearStack(S, proj_in, d, rank=cfg.out_rank))
