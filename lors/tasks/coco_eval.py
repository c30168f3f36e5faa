"""COCO box AP with pycocotools: AP, AP50, AP75, APs, APm, APl (in percent).

As in pycocotools, a metric is -1 when the ground truth has no object in its range
(e.g. APl on a set without objects larger than 96 x 96 pixels).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_evaluate(ann_file: str | Path, detections: list[dict], image_ids: list[int] | None = None) -> dict:
    """Evaluate ``detections`` ([{image_id, category_id, bbox [x, y, w, h] in original pixels, score}])
    against the ground truth in ``ann_file``, restricted to ``image_ids`` when given."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        if not detections or not gt.getAnnIds():
            return {k: 0.0 for k in METRICS}
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (100.0 * float(v) if v >= 0 else -1.0) for k, v in zip(METRICS, ev.stats[:6])}
