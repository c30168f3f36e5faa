"""AdaMixer's adaptive 3D sampling: points in (x, y, z) read from a feature pyramid with bilinear interpolation.

A query with box (x, y, z, r) places each of its P points per group at
``(x, y) + (dx, dy) * (w, h)`` and ``z + dz`` (w, h from z and r). Point z selects
pyramid levels softly: level j with stride s_j gets weight softmax_j(-(z - log2 s_j)^2 / 2).
Every level is read with ``grid_sample`` (bilinear, zeros outside, align_corners=False),
separately for each sampling group's channel slice.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .boxes import box_xyzr_to_xyxy


def make_sample_points(offsets: torch.Tensor, xyzr: torch.Tensor) -> torch.Tensor:
    """Absolute sampling points.

    Args:
        offsets: (B, N, G, P, 3) generated (dx, dy, dz); dx, dy in units of the box size.
        xyzr: (B, N, 4) query boxes, absolute pixels.
    Returns:
        (B, N, G, P, 3) points (x, y, z), x/y in pixels.
    """
    xyxy = box_xyzr_to_xyxy(xyzr)
    wh = (xyxy[..., 2:] - xyxy[..., :2])[:, :, None, None, :]  # (B, N, 1, 1, 2)
    xy = xyzr[..., None, None, :2] + offsets[..., :2] * wh
    z = xyzr[..., None, None, 2:3] + offsets[..., 2:3]
    return torch.cat([xy, z], -1)


def level_weights(z: torch.Tensor, strides: Sequence[int]) -> torch.Tensor:
    """(...,) point scales z -> (..., L) softmax over levels of -(z - log2 stride)^2 / 2."""
    log_strides = z.new_tensor([math.log2(s) for s in strides])
    return torch.softmax(-((z[..., None] - log_strides) ** 2) / 2, dim=-1)


def sampling_3d(points: torch.Tensor, features: Sequence[torch.Tensor], strides: Sequence[int]) -> torch.Tensor:
    """Sample features at 3D points.

    Args:
        points: (B, N, G, P, 3) absolute (x, y, z).
        features: L maps (B, C, H_l, W_l), C divisible by G; level l has stride ``strides[l]``.
    Returns:
        (B, N, G, P, C / G) sampled features.
    """
    B, N, G, P, _ = points.shape
    C = features[0].shape[1]
    weights = level_weights(points[..., 2], strides)  # (B, N, G, P, L)
    out = points.new_zeros(B, N, G, P, C // G)
    for level, (feat, stride) in enumerate(zip(features, strides)):
        H, W = feat.shape[-2:]
        # pixel -> [-1, 1] on this level's grid (align_corners=False: pixel centres at (i + 0.5) * stride)
        gx = points[..., 0] / (W * stride) * 2 - 1
        gy = points[..., 1] / (H * stride) * 2 - 1
        grid = torch.stack([gx, gy], -1).permute(0, 2, 1, 3, 4).reshape(B * G, N, P, 2)  # (B G, N, P, 2)
        fmap = feat.reshape(B * G, C // G, H, W)  # group g reads channels [g C/G, (g+1) C/G)
        sampled = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.reshape(B, G, C // G, N, P).permute(0, 3, 1, 4, 2)  # (B, N, G, P, C/G)
        out = out + sampled * weights[..., level:level + 1]
    return out
