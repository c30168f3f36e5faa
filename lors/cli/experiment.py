"""The one place a loaded config becomes objects: model factory, data sets, loaders, task, callbacks, Trainer.

``run_training(cfg, run_dir)`` is what ``lors train`` (and ``lors demo``) do; ``build_experiment(cfg)``
gives the pieces for other uses (``lors eval``, benchmarks).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from torch.utils.data import DataLoader

from ..engine import CsvLogger, Trainer
from ..engine.lct_schedule import lct_callbacks
from ..engine.distributed import train_loader
from ..errors import ConfigError
from .config import DetectionConfig, LMConfig

TOKENIZER = "tokenizer.json"  # a trained tokenizer, saved in the run directory


@dataclass
class Experiment:
    build_model: Callable[[], Any]
    train_set: Any
    test_set: Any
    task: Any
    lct_targets: str    # the model's block linears: what the LCT schedule factorises unless lct.targets says
    seed: int = 0       # the data order's seed (train.seed)
    tokenizer: Any = None  # language models: what turns text into ids (saved with the run when it was trained)

    def loaders(self, data) -> tuple[DataLoader, DataLoader]:
        """(train, test) loaders with the sizes of the ``data`` section; the train loader shards under torchrun."""
        collate = self.task.collate_fn
        train = train_loader(self.train_set, data.batch_size, self.seed, collate, data.num_workers)
        test = DataLoader(self.test_set, batch_size=data.eval_batch_size, shuffle=False, collate_fn=collate)
        return train, test


def classification(cfg) -> Experiment:
    from ..data.classification import build_dataset
    from ..models.vit import BLOCK_LINEARS, build_vit
    from ..tasks.classification import ClassificationTask

    return Experiment(lambda: build_vit(cfg.model), build_dataset(cfg.data, "train", train=True),
                      build_dataset(cfg.data, "test"), ClassificationTask.build(cfg.model.num_classes, cfg.loss),
                      BLOCK_LINEARS, cfg.train.seed)


def require_detection_packages() -> None:
    """Stop before training when the detection extras are missing (scipy: matching, pycocotools: COCO AP)."""
    import importlib.util

    missing = [m for m in ("scipy", "pycocotools") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"detection needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: pip install -e \".[detection]\"")


def detection(cfg: DetectionConfig) -> Experiment:
    require_detection_packages()
    from ..data.detection import CocoDetection
    from ..models.adamixer.backbone import load_torchvision_weights
    from ..models.adamixer.detector import build_adamixer
    from ..models.adamixer.losses import SetCriterion
    from ..tasks.detection import DetectionTask

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
    return Experiment(build, train_set, val_set, task, r"decoder\.stages\.\d+\.ffn\.\d", cfg.train.seed)


def language_model(cfg: LMConfig, run_dir: Optional[Path] = None, eval_split: str = "val",
                   log: Callable[[str], None] = print) -> Experiment:
    from ..data.text import build_lm_dataset, corpus_split, make_tokenizer
    from ..models.gpt import BLOCK_LINEARS, build_gpt
    from ..tasks.lm import LanguageModelTask

    T, train_text = cfg.model.block_size, corpus_split(cfg.data, "train")
    tokenizer = make_tokenizer(cfg.data, lambda: train_text,
                               saved=None if run_dir is None else Path(run_dir) / TOKENIZER)
    train_set = build_lm_dataset(cfg.data, "train", T, tokenizer, train_text)
    eval_set = build_lm_dataset(cfg.data, eval_split, T, tokenizer)
    cap = "" if cfg.data.max_eval_tokens is None else f", capped by data.max_eval_tokens={cfg.data.max_eval_tokens}"
    log(f"{'validation' if eval_split == 'val' else 'test'} split of {cfg.data.corpus} (split_seed "
        f"{cfg.data.split_seed}): {eval_set.scored_tokens:,} tokens, {eval_set.scored_bytes:,} bytes scored{cap}")
    return Experiment(lambda: build_gpt(cfg.model, tokenizer.vocab_size), train_set, eval_set,
                      LanguageModelTask(eval_set.token_bytes), BLOCK_LINEARS, cfg.train.seed, tokenizer)


def build_experiment(cfg, run_dir: Optional[str | Path] = None, eval_split: str = "val",
                     log: Callable[[str], None] = print) -> Experiment:
    """The pieces of ``cfg``'s run; ``run_dir``: a trained run whose saved tokenizer a language model reuses.
    ``eval_split``: what a language model is scored on (``"val"`` while training, ``"test"`` for ``lors eval``;
    image data sets have one held-out split)."""
    if isinstance(cfg, LMConfig):
        return language_model(cfg, run_dir, eval_split, log)
    return detection(cfg) if isinstance(cfg, DetectionConfig) else classification(cfg)


def run_training(cfg, run_dir: Optional[str | Path] = None, resume: bool = False, log=print,
                 experiment: Optional[Experiment] = None) -> list[dict]:
    """Train the config's model on its data with its task and LCT schedule; returns the per-epoch history.

    Writes ``run_dir`` (default ``train.output_dir``): ``last.json`` + tensors after every epoch, ``log.csv``."""
    run_dir = Path(run_dir or cfg.train.output_dir)
    exp = experiment or build_experiment(cfg, run_dir, log=log)
    if hasattr(exp.tokenizer, "save") and not (run_dir / TOKENIZER).is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        exp.tokenizer.save(run_dir / TOKENIZER)
    callbacks = lct_callbacks(cfg.lct, exp.lct_targets) + [CsvLogger(run_dir)]
    trainer = Trainer(cfg.train, exp.task, run_dir, callbacks, log=log, run_config=dataclasses.asdict(cfg))
    return trainer.fit(exp.build_model, *exp.loaders(cfg.data), resume=resume)
