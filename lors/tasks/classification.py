"""Image classification as a task for the Trainer: cross-entropy (label smoothing, mixup/cutmix), top-1/top-5.

A task gives the :class:`~lors.engine.Trainer` three things: ``collate_fn`` for the DataLoader,
``loss(model, batch, device) -> (loss, batch size)`` and ``evaluate(model, loader, device) -> metrics``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.trainer import autocast_for
from ..errors import at_least, fraction


@dataclass
class ClassificationLoss:
    """The classification loss (``loss:`` in a YAML file)."""

    label_smoothing: float = 0.1
    mixup: float = 0.0                  # Beta(alpha, alpha) for mixup; 0 disables
    cutmix: float = 0.0                 # Beta(alpha, alpha) for cutmix; 0 disables

    def __post_init__(self):
        fraction(self.label_smoothing, "loss.label_smoothing", high_open=True)
        at_least(self.mixup, 0, "loss.mixup")
        at_least(self.cutmix, 0, "loss.cutmix")


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float):
    """Mixup / CutMix (one of them, chosen at random when both are on). Returns x, soft targets (B, classes)."""
    target = F.one_hot(y, num_classes).float()
    if mixup <= 0 and cutmix <= 0:
        return x, target
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()) < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if use_cutmix:
        H, W = x.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(H, ())), int(torch.randint(W, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> dict:
    """Cross-entropy loss, top-1 and (when there are >= 5 classes) top-5 accuracy in percent."""
    model.eval()
    loss_sum, correct1, correct5, n, num_classes = 0.0, 0, 0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast_for(device):
            logits = model(x).float()
        num_classes = logits.shape[-1]
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, num_classes), dim=-1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(-1).sum().item()
        n += y.numel()
    out = {"test_loss": loss_sum / max(1, n), "top1": 100.0 * correct1 / max(1, n)}
    if num_classes >= 5:
        out["top5"] = 100.0 * correct5 / max(1, n)
    return out


class ClassificationTask:
    """Cross-entropy with label smoothing (and optional mixup/cutmix); top-1/top-5 evaluation."""

    collate_fn = None

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0):
        self.num_classes, self.label_smoothing, self.mixup, self.cutmix = num_classes, label_smoothing, mixup, cutmix

    @classmethod
    def build(cls, num_classes: int, loss: ClassificationLoss) -> "ClassificationTask":
        return cls(num_classes, loss.label_smoothing, loss.mixup, loss.cutmix)

    def loss(self, model, batch, device):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        x, target = mix_batch(x, y, self.num_classes, self.mixup, self.cutmix)
        with autocast_for(device):
            logits = model(x)
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing), x.shape[0]

    def evaluate(self, model, loader, device) -> dict:
        return evaluate(model, loader, device)
