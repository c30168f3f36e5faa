"""Object detection as a task for the Trainer: set-prediction losses, COCO AP (pycocotools) per epoch."""
from __future__ import annotations

import torch

from ..data.detection import collate
from ..engine.trainer import autocast_for
from ..models.adamixer.detector import postprocess
from .coco_eval import coco_evaluate


class DetectionTask:
    """Set-prediction losses summed with the criterion's weights; COCO AP evaluation with pycocotools."""

    def __init__(self, criterion, ann_file, label_to_cat: dict[int, int], top_k: int = 100):
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
