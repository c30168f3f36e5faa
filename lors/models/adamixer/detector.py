"""The AdaMixer detector: ResNet + channel mapper + learnable queries + AdaMixer decoder.

``forward(images, image_sizes)`` returns the DETR-style dict::

    pred_logits  (B, N, K)   class logits of the last stage (sigmoid, no background class)
    pred_boxes   (B, N, 4)   last-stage boxes, cxcywh normalised by each image's unpadded (w, h)
    aux_outputs  list of {"pred_logits", "pred_boxes"} for stages 0 .. S-2
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone import ChannelMapper, ResNet
from .boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, box_xyxy_to_xyzr, box_xyzr_to_xyxy
from .decoder import build_decoder

STRIDES = (4, 8, 16, 32)


class AdaMixer(nn.Module):
    """Query-based detector from ready parts (DETR style; :func:`build_adamixer` makes them from a config).

    Args:
        backbone: the trunk (:class:`~lors.models.adamixer.backbone.ResNet`) with ``out_channels``.
        neck: maps the trunk's levels to a pyramid of ``query_dim`` channels.
        decoder: the :class:`~lors.models.adamixer.decoder.AdaMixerDecoder`.
        query_content: ``nn.Embedding(num_queries, query_dim)``, the learned content of the queries.
        query_boxes: ``nn.Embedding(num_queries, 4)``, their initial boxes (cxcywh, normalised).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, decoder: nn.Module, query_content: nn.Embedding,
                 query_boxes: nn.Embedding):
        super().__init__()
        self.backbone, self.neck, self.query_content = backbone, neck, query_content
        self.query_norm = nn.LayerNorm(query_content.embedding_dim)
        self.query_boxes, self.decoder = query_boxes, decoder

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


def initial_queries(num_queries: int, dim: int) -> tuple[nn.Embedding, nn.Embedding]:
    """Learned query content (normal init) and boxes (every query starts as the whole image)."""
    content = nn.Embedding(num_queries, dim)
    boxes = nn.Embedding(num_queries, 4)  # cxcywh normalised
    nn.init.constant_(boxes.weight[:, :2], 0.5)
    nn.init.constant_(boxes.weight[:, 2:], 1.0)
    return content, boxes


def build_adamixer(cfg) -> AdaMixer:
    """Build from a :class:`lors.cli.config.AdaMixerConfig`: the one place its settings become modules."""
    backbone = ResNet(cfg.backbone_depth, cfg.backbone_width, cfg.frozen_bn)
    neck = ChannelMapper(backbone.out_channels, cfg.feat_channels)
    content, boxes = initial_queries(cfg.num_queries, cfg.feat_channels)
    return AdaMixer(backbone, neck, build_decoder(cfg), content, boxes)
