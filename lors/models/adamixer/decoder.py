"""AdaMixer decoder: stages of position-aware self-attention, adaptive 3D sampling, adaptive mixing, FFN, heads.

Every stage owns its attention, sampling-offset generator, FFN and heads (the
parts that stay per stage in both the dense and the LORS decoder). The adaptive
mixing of all stages is one :class:`~lors.models.adamixer.mixing.AdaptiveMixing`
module owned by the decoder, dense or LORS-factorised, called with the stage index.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ...nn.static import LorsLinearStack
from .boxes import box_iof, box_xyzr_to_xyxy
from .mixing import AdaptiveMixing, build_mixing
from .sampling import make_sample_points, sampling_3d


def position_embedding(xyzr: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of boxes (B, N, 4) -> (B, N, dim); x, y are scaled by 1/1000 first."""
    feats = dim // 4
    xyzr = xyzr / xyzr.new_tensor([1000.0, 1000.0, 1.0, 1.0])
    dim_t = temperature ** (2 * (torch.arange(feats, device=xyzr.device) // 2) / feats)
    pos = xyzr[..., None] / dim_t  # (B, N, 4, feats)
    return torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], -1).flatten(2)


class DecoderStage(nn.Module):
    """Per-stage parts of an AdaMixer decoder stage (everything but the adaptive mixing)."""

    def __init__(self, query_dim: int, num_classes: int, num_heads: int, n_groups: int, in_points: int,
                 ffn_dim: int = 2048, ffn: Optional[nn.Module] = None):
        super().__init__()
        self.n_groups, self.in_points, self.num_heads = n_groups, in_points, num_heads
        self.attention = nn.MultiheadAttention(query_dim, num_heads, batch_first=True)
        self.attention_norm = nn.LayerNorm(query_dim)
        self.iof_tau = nn.Parameter(torch.empty(num_heads))
        self.sampling_offsets = nn.Linear(query_dim, n_groups * in_points * 3)
        # the FFN (query_dim -> ffn_dim -> query_dim); the decoder passes LORS stack views to share it across stages
        self.ffn = ffn if ffn is not None else nn.Sequential(
            nn.Linear(query_dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, query_dim))
        self.ffn_norm = nn.LayerNorm(query_dim)
        self.cls_branch = nn.Sequential(nn.Linear(query_dim, query_dim), nn.LayerNorm(query_dim), nn.ReLU(inplace=True))
        self.fc_cls = nn.Linear(query_dim, num_classes)
        self.reg_branch = nn.Sequential(nn.Linear(query_dim, query_dim), nn.LayerNorm(query_dim), nn.ReLU(inplace=True))
        self.fc_reg = nn.Linear(query_dim, 4)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.fc_cls.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
        nn.init.zeros_(self.fc_reg.weight)
        nn.init.zeros_(self.fc_reg.bias)
        nn.init.uniform_(self.iof_tau, 0.0, 4.0)
        nn.init.zeros_(self.sampling_offsets.weight)
        bias = self.sampling_offsets.bias.view(self.n_groups, self.in_points, 3)
        side = int(math.isqrt(self.in_points))
        if side * side == self.in_points:  # a regular grid inside the box
            g = torch.linspace(-0.5, 0.5, side + 1)[:-1] + 0.5 / side
            bias[..., 0] = g.view(1, -1).repeat(side, 1).flatten()
            bias[..., 1] = g.view(-1, 1).repeat(1, side).flatten()
        else:
            nn.init.uniform_(bias[..., :2], -0.5, 0.5)
        bias[..., 2] = -1.0

    def self_attention(self, content: torch.Tensor, xyzr: torch.Tensor) -> torch.Tensor:
        """Position-aware self-attention: content (B, N, C), boxes (B, N, 4) -> (B, N, C)."""
        B, N, C = content.shape
        with torch.no_grad():
            boxes = box_xyzr_to_xyxy(xyzr)
            log_iof = (box_iof(boxes, boxes) + 1e-7).log()  # (B, N, N)
            pe = position_embedding(xyzr, C)
        bias = (log_iof[:, None] * self.iof_tau.view(1, -1, 1, 1)).flatten(0, 1)  # (B heads, N, N)
        q = content + pe
        out, _ = self.attention(q, q, q, attn_mask=bias.to(q.dtype), need_weights=False)
        return self.attention_norm(q + out)

    def sample(self, content: torch.Tensor, xyzr: torch.Tensor, features: Sequence[torch.Tensor],
               strides: Sequence[int]) -> torch.Tensor:
        """Adaptive 3D sampling -> (B, N, G, P_in, C_feat / G)."""
        B, N, _ = content.shape
        offsets = self.sampling_offsets(content).view(B, N, self.n_groups, self.in_points, 3)
        return sampling_3d(make_sample_points(offsets, xyzr), features, strides)

    def head(self, content: torch.Tensor):
        """FFN + LayerNorm, then the class logits (B, N, K) and box deltas (B, N, 4)."""
        content = self.ffn_norm(content + self.ffn(content))
        return content, self.fc_cls(self.cls_branch(content)), self.fc_reg(self.reg_branch(content))


def refine_xyzr(xyzr: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """xy += delta_xy * 2^z; z, r += delta_zr."""
    xy = xyzr[..., :2] + delta[..., :2] * (2.0 ** xyzr[..., 2:3])
    return torch.cat([xy, xyzr[..., 2:] + delta[..., 2:]], -1)


class AdaMixerDecoder(nn.Module):
    """Decoder stages sharing one (dense or LORS) adaptive-mixing module, from ready parts.

    Args:
        stages: the per-stage parts (:class:`DecoderStage`), one per stage.
        mixing: the :class:`~lors.models.adamixer.mixing.AdaptiveMixing` of all stages.
        ffn_in, ffn_out: when the stages' FFNs are shared, the two static LORS stacks whose layers the
            stages' FFNs are (owned here so the shared weights appear once); ``None`` otherwise.

    :func:`build_decoder` makes the parts from a config.
    """

    def __init__(self, stages: nn.ModuleList, mixing: AdaptiveMixing, ffn_in: Optional[nn.Module] = None,
                 ffn_out: Optional[nn.Module] = None):
        super().__init__()
        if len(stages) != mixing.num_stages:
            raise ValueError(f"{len(stages)} stages but the mixing has {mixing.num_stages}")
        if ffn_in is not None:
            self.ffn_in, self.ffn_out = ffn_in, ffn_out
        self.stages, self.mixing = stages, mixing

    def forward(self, content: torch.Tensor, xyzr: torch.Tensor, features: Sequence[torch.Tensor],
                strides: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Returns per stage (class logits (B, N, K), refined boxes xyzr (B, N, 4), absolute pixels)."""
        outputs = []
        for i, stage in enumerate(self.stages):
            content = stage.self_attention(content, xyzr)
            sampled = stage.sample(content, xyzr, features, strides)  # (B, N, G, P, C/G)
            content = self.mixing(sampled, content, i)
            content, logits, delta = stage.head(content)
            xyzr = refine_xyzr(xyzr, delta)
            outputs.append((logits, xyzr))
            xyzr = xyzr.detach()  # each stage refines the previous boxes without back-propagating into them
        return outputs


def build_decoder(cfg) -> AdaMixerDecoder:
    """The decoder of an :class:`~lors.cli.config.AdaMixerConfig`.

    ``ffn_rank > 0`` shares the stages' FFNs: each of the two FFN linears becomes a static LORS stack
    (one shared weight plus a rank-``ffn_rank`` residual and a bias per stage); 0 keeps a dense FFN per stage.
    """
    S, d = cfg.num_stages, cfg.feat_channels
    if cfg.ffn_rank < 0:
        raise ValueError(f"ffn_rank must be 0 (a dense FFN per stage) or a positive rank, got {cfg.ffn_rank}")
    ffn_in = ffn_out = None
    ffns = [None] * S  # each stage builds its own dense FFN
    if cfg.ffn_rank:  # the stages' FFNs become views of two static LORS stacks owned by the decoder
        ffn_in = LorsLinearStack(S, d, cfg.ffn_dim, rank=cfg.ffn_rank)
        ffn_out = LorsLinearStack(S, cfg.ffn_dim, d, rank=cfg.ffn_rank)
        ffns = [nn.Sequential(ffn_in.layer(i), nn.ReLU(inplace=True), ffn_out.layer(i)) for i in range(S)]
    stages = nn.ModuleList([DecoderStage(d, cfg.num_classes, cfg.num_heads, cfg.n_groups, cfg.in_points,
                                         cfg.ffn_dim, ffns[i]) for i in range(S)])
    return AdaMixerDecoder(stages, build_mixing(cfg), ffn_in, ffn_out)
