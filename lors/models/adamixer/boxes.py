"""Box formats and overlaps, in plain torch. The format is in every name.

* ``cxcywh``: centre x, centre y, width, height;
* ``xyxy``: left, top, right, bottom;
* ``xyzr`` (AdaMixer): centre x, centre y, z = log2(sqrt(w h)), r = log2(h / w).

Functions work on absolute or normalised coordinates alike unless stated.
"""
from __future__ import annotations

import torch


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def box_xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def box_xyzr_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """w = 2^(z - r/2), h = 2^(z + r/2), so sqrt(w h) = 2^z and h / w = 2^r."""
    xy, z, r = b[..., :2], b[..., 2:3], b[..., 3:4]
    wh = 2.0 ** torch.cat([z - 0.5 * r, z + 0.5 * r], -1)
    return torch.cat([xy - 0.5 * wh, xy + 0.5 * wh], -1)


def box_xyxy_to_xyzr(b: torch.Tensor) -> torch.Tensor:
    wh = (b[..., 2:] - b[..., :2]).clamp(min=1e-6)
    z = 0.5 * torch.log2(wh[..., 0] * wh[..., 1])
    r = torch.log2(wh[..., 1] / wh[..., 0])
    return torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, z, r], -1)


def box_area(b: torch.Tensor) -> torch.Tensor:
    """Area of xyxy boxes (..., 4) -> (...)."""
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection areas of xyxy boxes a (..., N, 4), b (..., M, 4) -> (..., N, M)."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (..., N, 4), (..., M, 4) -> (..., N, M)."""
    inter = _intersection(a, b)
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return inter / union.clamp(min=1e-12)


def box_iof(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection over the *first* box's area ("foreground"): (..., N, M)."""
    return _intersection(a, b) / box_area(a)[..., :, None].clamp(min=1e-12)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes: IoU - (enclosing area - union) / enclosing area, in [-1, 1]."""
    inter = _intersection(a, b)
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    iou = inter / union.clamp(min=1e-12)
    lt = torch.minimum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.maximum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = (wh[..., 0] * wh[..., 1]).clamp(min=1e-12)
    return iou - (enclosing - union) / enclosing
