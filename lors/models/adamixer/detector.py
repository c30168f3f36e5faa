"""The AdaMixer detector: ResNet + channel mapper + learnable queries + AdaMixer decoder.

``forward(images, image_sizes)`` returns the DETR-style dict::

    pred_logits  (B, N, K)   class logits of the last stage (sigmoid, no background class)
    pred_boxes   (B, N, 4)   last-stage boxes, cxcywh normalised by each image's unpadded (w, h)
    aux_outputs  list of {"pred_logits", "pred_boxes"} for stages 0 .. S-2
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .backbone import ChannelMapper, ResNet
from .boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, box_xyxy_to_xyzr, box_xyzr_to_xyxy
from .decoder import AdaMixerDecoder

STRIDES = (4, 8, 16, 32)


class AdaMixer(nn.Module):
    """Query-based detector. See :class:`~lors.models.adamixer.decoder.AdaMixerDecoder` for decoder arguments.

    Args:
        backbone_depth, backbone_width, frozen_bn: ResNet trunk (18/34/50, channel width, frozen BN).
        feat_channels: channels of the neck's pyramid (= query_dim).
        num_queries: number of object queries.
        decoder: ``"dense"`` or ``"lors"`` (the adaptive mixing).
        stage_bias, stage_bias_init, ffn_rank: see :class:`~lors.models.adamixer.decoder.AdaMixerDecoder`.
    """

    def __init__(self, num_classes: int = 80, backbone_depth: int = 50, backbone_width: int = 64,
                 frozen_bn: bool = False, feat_channels: int = 256, num_queries: int = 100, num_stages: int = 6,
                 num_heads: int = 8, n_groups: int = 4, in_points: int = 32, out_points: int = 128,
                 ffn_dim: int = 2048, decoder: str = "dense", core_size: int = 16,
                 core_groups: int | Sequence[int] = (1, 1, 2, 2, 3, 3), out_rank: int | Sequence[int] = 8,
                 factor_init: str = "official", stage_bias: bool = False, stage_bias_init: str = "zero",
                 ffn_rank: int = 0):
        super().__init__()
        self.backbone = ResNet(backbone_depth, backbone_width, frozen_bn)
        self.neck = ChannelMapper(self.backbone.out_channels, feat_channels)
        self.query_content = nn.Embedding(num_queries, feat_channels)
        self.query_norm = nn.LayerNorm(feat_channels)
        self.query_boxes = nn.Embedding(num_queries, 4)  # cxcywh normalised; init: the whole image
        nn.init.constant_(self.query_boxes.weight[:, :2], 0.5)
        nn.init.constant_(self.query_boxes.weight[:, 2:], 1.0)
        self.decoder = AdaMixerDecoder(num_stages, feat_channels, feat_channels, num_classes, num_heads, n_groups,
                                       in_points, out_points, ffn_dim, decoder, core_size, core_groups, out_rank,
                                       factor_init, stage_bias, stage_bias_init, ffn_rank)

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> dict:
        """images (B, 3, H, W) padded; image_sizes (B, 2) unpadded (width, height) in pixels."""
        features = self.neck(self.backbone(images))
        B = images.shape[0]
        whwh = image_sizes.to(images.dtype).repeat(1, 2)[:, None, :]  # (B, 1, 4)
        boxes = box_cxcywh_to_xyxy(self.query_boxes.weight)[None] * whwh  # (B, N, 4) absolute
        content = self.query_norm(self.query_content.weight)[None].expand(B, -1, -1)
        stages = self.decoder(content, box_xyxy_to_xyzr(boxes), features, STRIDES)
        outs = [{"pred_logits": logits, "pred_boxes": box_xyxy_to_cxcywh(box_xyzr_to_xyxy(xyzr) / whwh)}
                for logits, xyzr in stages]
        return {**outs[-1], "aux_outputs": outs[:-1]}


@torch.no_grad()
def postprocess(outputs: dict, target_sizes: torch.Tensor, top_k: int = 100) -> list[dict]:
    """Top-k over query x class of the sigmoid scores; boxes xyxy in pixels of ``target_sizes`` (B, 2) (w, h)."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    B, N, K = logits.shape
    scores, idx = logits.sigmoid().flatten(1).topk(min(top_k, N * K), dim=1)
    labels, query = idx % K, idx // K
    xyxy = box_cxcywh_to_xyxy(boxes) * target_sizes.to(boxes.dtype).repeat(1, 2)[:, None, :]
    picked = torch.gather(xyxy, 1, query[..., None].expand(-1, -1, 4))
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, picked)]


def build_adamixer(cfg) -> AdaMixer:
    """Build from a :class:`lors.config.AdaMixerConfig` (the only config -> constructor bridge)."""
    return AdaMixer(num_classes=cfg.num_classes, backbone_depth=cfg.backbone_depth,
                    backbone_width=cfg.backbone_width, frozen_bn=cfg.frozen_bn, feat_channels=cfg.feat_channels,
                    num_queries=cfg.num_queries, num_stages=cfg.num_stages, num_heads=cfg.num_heads,
                    n_groups=cfg.n_groups, in_points=cfg.in_points, out_points=cfg.out_points, ffn_dim=cfg.ffn_dim,
                    decoder=cfg.decoder, core_size=cfg.core_size, core_groups=cfg.core_groups,
                    out_rank=cfg.out_rank, factor_init=cfg.factor_init,
                    stage_bias=cfg.stage_bias, stage_bias_init=cfg.stage_bias_init, ffn_rank=cfg.ffn_rank)
