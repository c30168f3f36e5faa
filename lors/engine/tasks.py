"""What differs between training a classifier and a detector, behind one small interface.

A task gives ``fit`` three things: ``collate_fn`` for the DataLoader,
``loss(model, batch) -> (loss, batch size)``, and ``evaluate(model, loader) -> metrics``.
The training loop itself stays model-agnostic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .train import autocast_for, evaluate as evaluate_classifier, mix_batch


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
        return evaluate_classifier(model, loader, device)


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
        from ..models.adamixer.detector import postprocess
        from .coco_eval import coco_evaluate

        model.eval()
        detections, image_ids = [], []
        for images, sizes, targets in loader:
            with autocast_for(device):
                outputs = model(images.to(device), sizes.to(device))
            outputs = {k: v.float() for k, v in outputs.items() if torch.is_tensor(v)}
            orig = torch.stack([t["orig_size"] for t in targets]).to(device)
            for t, res in zip(targets, postprocess(outputs, orig, self.top_k)):
                image_ids.append(t["image_id"])
                for score, label, (x0, y0, x1, y1) in zip(res["scores"].tolist(), res["labels"].tolist(),
                                                          res["boxes"].tolist()):
                    detections.append({"image_id": t["image_id"], "category_id": self.label_to_cat[label],
                                       "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
        return coco_evaluate(self.ann_file, detections, image_ids)
