"""The bridge from a loaded config to what a run needs: model factory, datasets, task, LCT targets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, DetectionConfig


@dataclass
class Experiment:
    build_model: Callable[[], Any]
    train_set: Any
    test_set: Any
    task: Any
    lct_targets: str


def classification(cfg) -> Experiment:
    from .data.classification import build_dataset
    from .engine.tasks import ClassificationTask
    from .models.vit import BLOCK_LINEARS, build_vit

    t = cfg.train
    return Experiment(lambda: build_vit(cfg.model), build_dataset(cfg.data, "train", t.seed, train=True),
                      build_dataset(cfg.data, "test", t.seed),
                      ClassificationTask(cfg.model.num_classes, t.label_smoothing, t.mixup, t.cutmix), BLOCK_LINEARS)


def require_detection_packages() -> None:
    """Stop before training when the detection extras are missing (scipy: matching, pycocotools: COCO AP)."""
    import importlib.util

    missing = [m for m in ("scipy", "pycocotools") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"detection needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: pip install -e \".[detection]\"")


def detection(cfg: DetectionConfig) -> Experiment:
    from .data.detection import CocoDetection
    from .engine.tasks import DetectionTask
    from .models.adamixer.backbone import load_torchvision_weights
    from .models.adamixer.detector import build_adamixer
    from .models.adamixer.losses import SetCriterion

    require_detection_packages()
    d, m = cfg.data, cfg.model
    root = Path(d.root)
    train_set = CocoDetection(root / d.train_images, root / d.train_ann, d.max_size, train=True)
    val_set = CocoDetection(root / d.val_images, root / d.val_ann, d.max_size, train=False)
    if len(train_set.categories) != m.num_classes:
        raise ConfigError(f"model.num_classes is {m.num_classes} but {root / d.train_ann} has "
                          f"{len(train_set.categories)} categories")

    def build():
        model = build_adamixer(m)
        if m.backbone_weights:
            load_torchvision_weights(model.backbone, m.backbone_weights)
        return model

    task = DetectionTask(SetCriterion(m.num_classes, num_stages=m.num_stages), root / d.val_ann,
                         val_set.label_to_cat, d.top_k)
    return Experiment(build, train_set, val_set, task, r"decoder\.stages\.\d+\.ffn\.\d")


def build_experiment(cfg) -> Experiment:
    return detection(cfg) if isinstance(cfg, DetectionConfig) else classification(cfg)
