"""Hungarian matching of predictions to targets (one batched cost matrix, split per image)."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """Cost of assigning each prediction (M, K logits) to each target label (T,) -> (M, T)."""
    p = logits.sigmoid()
    neg = (1 - alpha) * p.pow(gamma) * -(1 - p + 1e-8).log()
    pos = alpha * (1 - p).pow(gamma) * -(p + 1e-8).log()
    return pos[:, labels] - neg[:, labels]


class HungarianMatcher(nn.Module):
    """Cost = w_class * focal cost + w_l1 * L1(cxcywh) + w_giou * (-GIoU); one optimal assignment per image."""

    def __init__(self, cost_class: float = 2.0, cost_l1: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        self.cost_class, self.cost_l1, self.cost_giou = cost_class, cost_l1, cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: pred_logits (B, N, K), pred_boxes (B, N, 4) normalised cxcywh; targets: per image
        ``labels`` (T_b,) and ``boxes`` (T_b, 4) normalised cxcywh. Returns per image (pred idx, target idx)."""
        B, N, _ = outputs["pred_logits"].shape
        logits = outputs["pred_logits"].flatten(0, 1).float()  # (B N, K)
        boxes = outputs["pred_boxes"].flatten(0, 1).float()  # (B N, 4)
        labels = torch.cat([t["labels"] for t in targets])
        tgt = torch.cat([t["boxes"] for t in targets]).float()
        if len(labels) == 0:
            empty = torch.empty(0, dtype=torch.long)
            return [(empty, empty) for _ in targets]
        cost = (self.cost_class * focal_class_cost(logits, labels)
                + self.cost_l1 * torch.cdist(boxes, tgt, p=1)
                - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt)))
        cost = cost.view(B, N, -1).cpu()
        sizes = [len(t["labels"]) for t in targets]
        out = []
        for b, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[b].numpy())
            out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return out
