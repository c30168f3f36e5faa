"""Set criterion: sigmoid focal loss, L1 and GIoU on matched pairs, for every decoder stage.

Returns unweighted named losses (last stage: ``loss_focal``, ``loss_l1``, ``loss_giou``;
stage i < S-1: the same names with suffix ``_{i}``) and a ``weight_dict`` the engine uses to sum them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import HungarianMatcher


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Element-wise focal loss: -alpha_t (1 - p_t)^gamma log(p_t), targets in {0, 1} (same shape)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t).pow(gamma) * ce


class SetCriterion(nn.Module):
    def __init__(self, num_classes: int, matcher: HungarianMatcher = None, weight_focal: float = 2.0,
                 weight_l1: float = 5.0, weight_giou: float = 2.0, num_stages: int = 6):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher(weight_focal, weight_l1, weight_giou)
        base = {"loss_focal": weight_focal, "loss_l1": weight_l1, "loss_giou": weight_giou}
        self.weight_dict = dict(base)
        for i in range(num_stages - 1):
            self.weight_dict.update({f"{k}_{i}": v for k, v in base.items()})

    def stage_losses(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict:
        indices = self.matcher(outputs, targets)
        logits, boxes = outputs["pred_logits"].float(), outputs["pred_boxes"].float()
        target_cls = torch.zeros_like(logits)
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        labels = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)])
        target_cls[batch_idx, src_idx, labels] = 1.0
        loss_focal = sigmoid_focal_loss(logits, target_cls).sum() / num_boxes
        matched = boxes[batch_idx, src_idx]  # (M, 4)
        tgt_boxes = torch.cat([t["boxes"][tgt] for t, (_, tgt) in zip(targets, indices)]).float()
        loss_l1 = F.l1_loss(matched, tgt_boxes, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(tgt_boxes)))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_focal": loss_focal, "loss_l1": loss_l1, "loss_giou": loss_giou}

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        num_boxes = max(1.0, float(sum(len(t["labels"]) for t in targets)))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            n = torch.tensor(num_boxes)
            torch.distributed.all_reduce(n)
            num_boxes = max(1.0, n.item() / torch.distributed.get_world_size())
        losses = self.stage_losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self.stage_losses(aux, targets, num_boxes).items()})
        return losses

    def total(self, losses: dict) -> torch.Tensor:
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)
