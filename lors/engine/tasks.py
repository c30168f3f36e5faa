"""What differs between training a classifier and a detector, behind one small interface.

A task gives ``fit`` three things: ``collate_fn`` for the DataLoader,
``loss(model, batch) -> (loss, batch size)``, and ``evaluate(model, loader) -> metrics``.
The training loop itself stays model-agnostic.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .train import autocast_for


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

    def loss(self, model, batch, device):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        x, target = mix_batch(x, y, self.num_classes, self.mixup, self.cutmix)
        with autocast_for(device):
            logits = model(x)
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing), x.shape[0]

    def evaluate(self, model, loader, device) -> dict:
        return evaluate(model, loader, device)


class DetectionTask:
    """Set-prediction losses summed with the criterion's weights; COCO AP evaluation with pycocotools."""

    def __init__(self, criterion, ann_file, label_to_cat: dict[int, int], top_k: int = 100):
        from ..data.detection import collate

        self.collate_fn = collate
        self.criterion, self.ann_file, self.label_to_cat, self.top_k = criterion, ann_file, label_to_cat, top_k

    @staticmethod
    def _to(targets, device):
        return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]

    def loss(self, model, batch, device):
        images, sizes, targets = batch
        with autocast_for(device):
            outputs = model(images.to(device), sizes.to(device))
        losses = self.criterion(outputs, self._to(targets, device))
        return self.criterion.total(losses), images.shape[0]

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> dict:
        """COCO metrics of the last decoder stage's detections."""
        return self.evaluate_stages(model, loader, device, last_only=True)[-1]

    @torch.no_grad()
    def evaluate_stages(self, model, loader, device, last_only: bool = False) -> list[dict]:
        """COCO metrics of every decoder stage's detections (first to last), from one pass over ``loader``.

        Each stage's class logits and refined boxes are scored as if that stage were the last, which
        shows where in the decoder the accuracy is made (or lost)."""
        from ..models.adamixer.detector import postprocess
        from .coco_eval import coco_evaluate

        model.eval()
        detections: list[list[dict]] = []  # one list per stage, made at the first batch
        image_ids = []
        for images, sizes, targets in loader:
            with autocast_for(device):
                outputs = model(images.to(device), sizes.to(device))
            stages = [outputs] if last_only else [*outputs["aux_outputs"], outputs]
            if not detections:
                detections = [[] for _ in stages]
            orig = torch.stack([t["orig_size"] for t in targets]).to(device)
            image_ids += [t["image_id"] for t in targets]
            for out, dets in zip(stages, detections):
                out = {k: out[k].float() for k in ("pred_logits", "pred_boxes")}
                for t, res in zip(targets, postprocess(out, orig, self.top_k)):
                    for score, label, (x0, y0, x1, y1) in zip(res["scores"].tolist(), res["labels"].tolist(),
                                                              res["boxes"].tolist()):
                        dets.append({"image_id": t["image_id"], "category_id": self.label_to_cat[label],
                                     "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
        # an empty loader made no per-stage lists: score one empty stage
        return [coco_evaluate(self.ann_file, dets, image_ids) for dets in detections or [[]]]
