"""Experiment configuration: YAML <-> dataclasses, checked key by key.

A YAML file has sections that map 1:1 onto dataclasses, chosen by an optional
top-level ``task`` key::

    task: classification | detection | lm   # default: classification
    model: {...}   # ViTConfig (classification), AdaMixerConfig (detection) or GPTConfig (lm)
    data:  {...}   # DataConfig, DetectionDataConfig or TextDataConfig
    train: {...}   # the engine's TrainConfig: optimiser, schedule, seed, device, output
    lct:   {...}   # optional LctScheduleConfig: factorise during training (lors.engine.callbacks)
    loss:  {...}   # classification only: ClassificationLoss (label smoothing, mixup, cutmix)

Each dataclass lives with the code that uses it (the engine's, the callback's, the task's); the
model and data sections are defined here, with allowed values imported from the modules that
implement them. No inheritance, no includes. ``--set section.key=value`` overrides a key (the value
is parsed as YAML, so ``--set train.lr=1e-3`` and ``--set model.rank=[8,8]`` work).
Unknown keys and values of the wrong type raise ``ConfigError`` naming the key.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .config_upgrade import refuse_old_key

from ..data.classification import DATASETS
from ..data.text import CORPORA, SPLIT_SEED, TOKENIZERS
from ..engine.lct_schedule import LctScheduleConfig
from ..engine.config import TrainConfig
from ..errors import ConfigError, at_least, fraction, one_of
from ..models.adamixer.backbone import LAYOUTS
from ..models.adamixer.mixing import VARIANTS as DECODERS
from ..models.vit import PRESETS, VARIANTS
from ..nn.adaptive import FACTOR_INITS, LAYER_BIAS_INITS
from ..nn.checks import block_indices
from ..tasks.classification import ClassificationLoss

__all__ = ["AdaMixerConfig", "ClassificationLoss", "Config", "ConfigError", "DataConfig", "DetectionConfig",
           "DetectionDataConfig", "GPTConfig", "LMConfig", "LctScheduleConfig", "TextDataConfig", "TrainConfig",
           "ViTConfig", "config_from_dict", "from_dict", "load_config"]


def _counts(obj, section: str, names: tuple[str, ...], low: int = 1) -> None:
    """Every field in ``names`` that is set must be an int (or list of ints) >= ``low``."""
    for name in names:
        value = getattr(obj, name)
        for v in value if isinstance(value, list) else [value]:
            at_least(v, low, f"{section}.{name}", "a whole number")


def _dense_blocks(obj, depth: int) -> None:
    """``model.dense_blocks``: block indices in [-depth, depth) and only with the variants lct and cola."""
    try:
        block_indices(obj.dense_blocks, depth, "config key 'model.dense_blocks'")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if obj.dense_blocks and obj.variant not in ("lct", "cola"):
        raise ConfigError(f"config key 'model.dense_blocks' applies to model.variant 'lct' or 'cola', "
                          f"not {obj.variant!r}")


@dataclass
class ViTConfig:
    preset: Optional[str] = None        # "deit-tiny" | "deit-small": sets dim/depth/heads/mlp_dim
    img_size: int = 8
    patch_size: int = 2
    in_chans: int = 1
    num_classes: int = 10
    dim: Optional[int] = None           # without a preset: 64
    depth: Optional[int] = None         # without a preset: 12
    heads: Optional[int] = None         # without a preset: 4
    mlp_dim: Optional[int] = None       # without a preset: 128
    variant: str = "dense"              # "dense" | "lors" | "lct" | "cola"
    rank: Union[int, list[int]] = 4     # LORS residual rank (per block or one for all)
    attn_groups: Union[int, list[int]] = 1
    mlp_groups: Union[int, list[int]] = 1
    lct_rank: Optional[int] = None      # factor rank for variants "lct" (U V) and "cola" (B σ(A x))
    dense_blocks: list[int] = field(default_factory=list)  # lct/cola: blocks (negative: from the end) kept nn.Linear
    b_init_std: float = 0.0             # LORS: std of a normal init of the residual factors B (0: zero, the paper's)

    def __post_init__(self):
        one_of(self.variant, VARIANTS, "model.variant")
        if self.preset is not None:
            one_of(self.preset, tuple(PRESETS), "model.preset")
        _counts(self, "model", ("img_size", "patch_size", "in_chans", "num_classes", "dim", "depth", "heads",
                                "mlp_dim", "rank", "attn_groups", "mlp_groups", "lct_rank"))
        at_least(self.b_init_std, 0, "model.b_init_std")
        _dense_blocks(self, self.depth or (PRESETS[self.preset]["depth"] if self.preset else 12))
        if self.variant in ("lct", "cola") and self.lct_rank is None:
            raise ConfigError(f"model.variant '{self.variant}' needs model.lct_rank (an int); to factorise at a tolerance "
                              "instead, keep variant 'dense' and set lct.epsilon")


@dataclass
class DataConfig:
    dataset: str = "digits"             # "digits" | "mnist" | "cifar10" | "cifar100" | "imagefolder"
    root: Optional[str] = None          # directory for cifar*/imagefolder (train/ and val/ subfolders)
    img_size: Optional[int] = None      # resize imagefolder images to this size
    batch_size: int = 64
    eval_batch_size: int = 256
    augment: bool = True                # random crop (pad 1/8 of the size) + horizontal flip
    hflip: bool = False                 # horizontal flips (off for digits, on for natural images)
    test_fraction: float = 0.2          # digits, mnist: held-out stratified fraction
    split_seed: int = SPLIT_SEED        # digits, mnist: which images are held out; never moves with train.seed
    num_workers: int = 0

    def __post_init__(self):
        one_of(self.dataset, DATASETS, "data.dataset")
        _counts(self, "data", ("img_size", "batch_size", "eval_batch_size"))
        _counts(self, "data", ("num_workers", "split_seed"), low=0)
        fraction(self.test_fraction, "data.test_fraction", low_open=True, high_open=True)
        if self.dataset in ("cifar10", "cifar100", "imagefolder") and self.root is None:
            raise ConfigError(f"data.dataset '{self.dataset}' needs data.root (the directory holding the data set; "
                              "nothing is downloaded)")
        if self.dataset == "imagefolder" and self.img_size is None:
            raise ConfigError("data.dataset 'imagefolder' needs data.img_size (images are resized to it)")


@dataclass
class Config:
    task: str = "classification"
    model: ViTConfig = field(default_factory=ViTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lct: LctScheduleConfig = field(default_factory=LctScheduleConfig)
    loss: ClassificationLoss = field(default_factory=ClassificationLoss)


@dataclass
class AdaMixerConfig:
    num_classes: int = 3
    backbone_depth: int = 18            # 18 | 34 | 50
    backbone_width: int = 16            # 64 = the standard ResNet
    frozen_bn: bool = False
    backbone_weights: Optional[str] = None  # local torchvision ResNet checkpoint (.safetensors or .pth)
    feat_channels: int = 64             # neck channels = query dimension
    num_queries: int = 30
    num_stages: int = 6
    num_heads: int = 4
    n_groups: int = 2                   # sampling groups
    in_points: int = 16                 # sampled points per group
    out_points: int = 64                # points after spatial mixing
    ffn_dim: int = 256
    decoder: str = "dense"              # "dense" | "lors"
    core_size: int = 4                  # LORS: side k of each query-generated core
    core_groups: Union[int, list[int]] = field(default_factory=lambda: [1, 1, 2, 2, 3, 3])
    out_rank: Union[int, list[int]] = 8  # LORS: rank of each stage's out-projection residual (int or one per stage)
    factor_init: str = "official"       # LORS: left/right factor init, "official" (3-D fan-in) | "matrix" (2-D)
    stage_bias: bool = False            # LORS: a private full generator bias per stage (see RESULTS.md)
    stage_bias_init: str = "zero"       # LORS: "zero" | "random" (each stage's bias drawn as a dense stage's)
    ffn_rank: int = 0                   # >0: the stages' FFNs share weights (static LORS, this residual rank)

    def __post_init__(self):
        one_of(self.decoder, DECODERS, "model.decoder")
        one_of(self.factor_init, FACTOR_INITS, "model.factor_init")
        one_of(self.backbone_depth, tuple(LAYOUTS), "model.backbone_depth")
        one_of(self.stage_bias_init, LAYER_BIAS_INITS, "model.stage_bias_init")
        _counts(self, "model", ("num_classes", "backbone_width", "feat_channels", "num_queries", "num_stages",
                                "num_heads", "n_groups", "in_points", "out_points", "ffn_dim", "core_size",
                                "core_groups", "out_rank"))
        if self.stage_bias_init == "random" and not (self.decoder == "lors" and self.stage_bias):
            raise ConfigError("config key 'model.stage_bias_init: random' needs model.decoder: lors and "
                              "model.stage_bias: true")
        if self.ffn_rank < 0:
            raise ConfigError(f"config key 'model.ffn_rank' must be 0 (dense FFN per stage) or a positive rank; "
                              f"got {self.ffn_rank}")


@dataclass
class DetectionDataConfig:
    root: str = "data/shapes"           # COCO-format dataset directory
    train_images: str = "train"         # image folders and instances files, relative to root
    val_images: str = "val"
    train_ann: str = "annotations/instances_train.json"
    val_ann: str = "annotations/instances_val.json"
    max_size: int = 128                 # longer image side after resizing
    batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 0
    top_k: int = 100                    # detections kept per image

    def __post_init__(self):
        _counts(self, "data", ("max_size", "batch_size", "eval_batch_size", "top_k"))
        _counts(self, "data", ("num_workers",), low=0)


@dataclass
class DetectionConfig:
    task: str = "detection"
    model: AdaMixerConfig = field(default_factory=AdaMixerConfig)
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lct: LctScheduleConfig = field(default_factory=LctScheduleConfig)


@dataclass
class GPTConfig:
    block_size: int = 128               # context length (tokens)
    dim: int = 128
    depth: int = 12
    heads: int = 4
    mlp_dim: int = 512
    variant: str = "dense"              # "dense" | "lors" | "lct" | "cola"
    rank: Union[int, list[int]] = 8     # LORS residual rank (per block or one for all)
    attn_groups: Union[int, list[int]] = 1
    mlp_groups: Union[int, list[int]] = 1
    lct_rank: Optional[int] = None      # factor rank for variants "lct" (U V) and "cola" (B σ(A x))
    dense_blocks: list[int] = field(default_factory=list)  # lct/cola: blocks (negative: from the end) kept nn.Linear
    b_init_std: float = 0.0

    def __post_init__(self):
        one_of(self.variant, VARIANTS, "model.variant")
        _counts(self, "model", ("block_size", "dim", "depth", "heads", "mlp_dim", "rank", "attn_groups",
                                "mlp_groups", "lct_rank"))
        at_least(self.b_init_std, 0, "model.b_init_std")
        _dense_blocks(self, self.depth)
        if self.dim % self.heads:
            raise ConfigError(f"config key 'model.dim' ({self.dim}) must be divisible by model.heads ({self.heads})")
        if self.variant in ("lct", "cola") and self.lct_rank is None:
            raise ConfigError(f"model.variant '{self.variant}' needs model.lct_rank (an int)")


@dataclass
class TextDataConfig:
    corpus: str = "pydoc"               # "pydoc" (Python's reference text) | "kjv" (extra text) | "files" (data.root)
    root: Optional[str] = None          # a .txt file or a folder of them, for corpus "files" (only)
    tokenizer: str = "bytes"            # "bytes" (256 ids, no training) | "bpe" (trained on the training split)
    vocab_size: Optional[int] = None    # BPE vocabulary (tokenizer "bpe" only; default 1024)
    split_seed: int = SPLIT_SEED        # which documents are held out; never moves with train.seed
    val_fraction: float = 0.1           # of the characters, whole documents
    test_fraction: float = 0.1
    batch_size: int = 16
    eval_batch_size: int = 32
    max_eval_tokens: Optional[int] = None  # cap on the scored tokens of validation / test, evenly spread (null: all)
    train_windows: Optional[int] = None    # an epoch = N random training windows (null: every window once)
    num_workers: int = 0

    def __post_init__(self):
        one_of(self.corpus, CORPORA, "data.corpus")
        one_of(self.tokenizer, TOKENIZERS, "data.tokenizer")
        if self.root is not None and self.corpus != "files":
            raise ConfigError(f"config key 'data.root' applies to data.corpus 'files' only; data.corpus is "
                              f"{self.corpus!r} (remove data.root, or set data.corpus: files)")
        if self.corpus == "files" and self.root is not None and not Path(self.root).exists():
            raise ConfigError(f"config key 'data.root': {self.root} does not exist (a .txt file or a folder of them)")
        if self.vocab_size is not None and self.tokenizer != "bpe":
            raise ConfigError(f"config key 'data.vocab_size' applies to data.tokenizer 'bpe' only; byte tokens have "
                              f"256 ids (remove data.vocab_size, or set data.tokenizer: bpe)")
        if self.vocab_size is not None:
            at_least(self.vocab_size, 257, "data.vocab_size", "a vocabulary (256 bytes + merges)")
        fraction(self.val_fraction, "data.val_fraction", low_open=True, high_open=True)
        fraction(self.test_fraction, "data.test_fraction", high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("data.val_fraction + data.test_fraction must leave text for training (sum < 1)")
        _counts(self, "data", ("batch_size", "eval_batch_size", "max_eval_tokens", "train_windows"))
        _counts(self, "data", ("num_workers", "split_seed"), low=0)


@dataclass
class LMConfig:
    task: str = "lm"
    model: GPTConfig = field(default_factory=GPTConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lct: LctScheduleConfig = field(default_factory=LctScheduleConfig)


TASKS = {"classification": Config, "detection": DetectionConfig, "lm": LMConfig}


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Union:
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _coerce(value: Any, tp: Any) -> Any:
    """YAML 1.1 reads '3e-4' (no dot) as a string: accept such numbers for float fields."""
    allowed = typing.get_args(tp) if typing.get_origin(tp) is Union else (tp,)
    if isinstance(value, str) and float in allowed:
        try:
            return float(value)
        except ValueError:
            return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and ill-typed values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        refuse_old_key(f"{prefix}{key}")
        if key not in hints:
            raise ConfigError(f"unknown config key '{prefix}{key}'; allowed keys: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, f"{prefix}{key}.")
        elif _type_ok(_coerce(value, tp), tp):
            kwargs[key] = _coerce(value, tp)
        else:
            raise ConfigError(f"config key '{prefix}{key}' must be {_type_name(tp)}, got {value!r}")
    return cls(**kwargs)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``section.key=value`` override to a raw config dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {path}: '{k}' is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML config file; an empty, non-mapping or unparsable file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty; give at least one of the sections model, data, train "
                          "(omit the file to train with the defaults)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (task, model, data, train, lct, loss), "
                          f"got a YAML {type(data).__name__}")
    return data


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None):
    """Read a YAML config (or start from defaults), apply ``--set`` overrides, validate.

    Returns a :class:`Config` or, with ``task: detection``, a :class:`DetectionConfig`. Errors name the file."""
    if path is None:
        return config_from_dict({}, overrides)
    try:
        return config_from_dict(read_yaml(path), overrides)
    except ConfigError as e:
        if str(path) in str(e):
            raise
        raise ConfigError(f"{path}: {e}") from None


def config_from_dict(data: dict, overrides: Optional[list[str]] = None):
    """Like :func:`load_config`, from a dict (e.g. the config a checkpoint was trained with)."""
    data = copy.deepcopy(data)
    for assignment in overrides or []:
        apply_override(data, assignment)
    task = data.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"config key 'task' must be one of {tuple(TASKS)}, got {task!r}")
    return from_dict(TASKS[task], data)


