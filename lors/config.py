"""Experiment configuration: YAML <-> dataclasses, checked key by key.

A YAML file has three sections that map 1:1 onto dataclasses below, chosen by
an optional top-level ``task`` key::

    task: classification | detection    # default: classification
    model: {...}   # ViTConfig (classification) or AdaMixerConfig (detection)
    data:  {...}   # DataConfig or DetectionDataConfig
    train: {...}   # TrainConfig: optimiser, schedule, logging, checkpoints

No inheritance, no includes. ``--set section.key=value`` overrides a key (the value
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


class ConfigError(ValueError):
    """A configuration key is unknown, ill-typed or out of range."""


def one_of(value, allowed: tuple, key: str):
    """``value`` if it is in ``allowed``, else a ConfigError naming ``key`` and the allowed values."""
    if value not in allowed:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


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
    variant: str = "dense"              # "dense" | "lors" | "lct"
    rank: Union[int, list[int]] = 4     # LORS residual rank (per block or one for all)
    attn_groups: Union[int, list[int]] = 1
    mlp_groups: Union[int, list[int]] = 1
    lct_rank: Optional[int] = None      # LowRankLinear rank for variant "lct"
    b_init_std: float = 0.0             # LORS: std of a normal init of the residual factors B (0: zero, the paper's)

    def __post_init__(self):
        one_of(self.variant, ("dense", "lors", "lct"), "model.variant")
        if self.preset is not None:
            one_of(self.preset, ("deit-tiny", "deit-small"), "model.preset")
        if self.variant == "lct" and self.lct_rank is None:
            raise ConfigError("model.variant 'lct' needs model.lct_rank (an int); to factorise at a tolerance "
                              "instead, keep variant 'dense' and set train.lct_epsilon")


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
    num_workers: int = 0

    def __post_init__(self):
        one_of(self.dataset, ("digits", "mnist", "cifar10", "cifar100", "imagefolder"), "data.dataset")
        if self.dataset in ("cifar10", "cifar100", "imagefolder") and self.root is None:
            raise ConfigError(f"data.dataset '{self.dataset}' needs data.root (the directory holding the data set; "
                              "nothing is downloaded)")
        if self.dataset == "imagefolder" and self.img_size is None:
            raise ConfigError("data.dataset 'imagefolder' needs data.img_size (images are resized to it)")


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    label_smoothing: float = 0.1
    clip_grad: Optional[float] = 1.0    # max gradient norm; null disables
    mixup: float = 0.0                  # Beta(alpha, alpha) for mixup; 0 disables
    cutmix: float = 0.0                 # Beta(alpha, alpha) for cutmix; 0 disables
    seed: int = 0
    output_dir: str = "runs/exp"
    device: str = "auto"                # "auto" | "cpu" | "cuda"
    progress: bool = True               # tqdm progress bar
    # Shared-aware optimisation: a LORS weight shared by N layers gets lr * shared_lr_scale, where
    # shared_lr_scale is a number or a rule of N: "1/sqrt(N)" (default; see RESULTS.md), "1/N", "1".
    shared_lr_scale: Union[float, str] = "1/sqrt(N)"
    private_lr_scale: float = 1.0       # lr factor of the private low-rank residual factors
    # Rescale each layer's contribution to a shared tensor's gradient to the layers' mean size
    # (lors.balance_shared_gradients), so no single layer steers the shared weight.
    shared_grad_balance: bool = False

    def __post_init__(self):
        from .optim import SHARED_LR_RULES

        one_of(self.device, ("auto", "cpu", "cuda"), "train.device")
        scale = self.shared_lr_scale
        if isinstance(scale, str) and scale not in SHARED_LR_RULES or not isinstance(scale, str) and scale <= 0:
            raise ConfigError(f"config key 'train.shared_lr_scale' must be a positive number or one of "
                              f"{tuple(SHARED_LR_RULES)}, got {scale!r}")
        if self.lct_ramp_epochs < 0:
            raise ConfigError(f"config key 'train.lct_ramp_epochs' must be 0 (one-shot LCT) or a positive number of "
                              f"epochs, got {self.lct_ramp_epochs}")
        if self.private_lr_scale <= 0:
            raise ConfigError(f"config key 'train.private_lr_scale' must be positive, got {self.private_lr_scale}")
    # LCT schedule: train dense for lct_warmup_epochs, then factorise the block linears
    # at lct_epsilon (or lct_rank) and continue in factored form.
    lct_epsilon: Optional[float] = None
    lct_rank: Optional[int] = None
    lct_warmup_epochs: int = 0
    lct_targets: Optional[str] = None   # regex of module paths to factorise (default: the model's block linears)
    lct_lr_scale: float = 1.0           # lr factor of the LCT factors U, V
    lct_ramp_epochs: int = 0            # >0: cut the dense weights' ranks gradually over this many epochs, then factorise
    lct_reproject_every: int = 0        # every N steps re-balance U, V by SVD of U V (0: never)
    lct_reproject_epsilon: Optional[float] = None  # ... and re-truncate each layer to this tolerance
    lct_frobenius_decay: float = 0.0    # lambda of (lambda/2)||U V||_F^2 replacing weight decay on U, V


@dataclass
class Config:
    task: str = "classification"
    model: ViTConfig = field(default_factory=ViTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


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
        one_of(self.decoder, ("dense", "lors"), "model.decoder")
        one_of(self.factor_init, ("matrix", "official"), "model.factor_init")
        one_of(self.backbone_depth, (18, 34, 50), "model.backbone_depth")
        one_of(self.stage_bias_init, ("zero", "random"), "model.stage_bias_init")
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


@dataclass
class DetectionConfig:
    task: str = "detection"
    model: AdaMixerConfig = field(default_factory=AdaMixerConfig)
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


TASKS = {"classification": Config, "detection": DetectionConfig}


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


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None):
    """Read a YAML config (or start from defaults), apply ``--set`` overrides, validate.

    Returns a :class:`Config` or, with ``task: detection``, a :class:`DetectionConfig`."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
    return config_from_dict(data, overrides)


def config_from_dict(data: dict, overrides: Optional[list[str]] = None):
    """Like :func:`load_config`, from a dict (e.g. the config a checkpoint was trained with)."""
    data = copy.deepcopy(data)
    for assignment in overrides or []:
        apply_override(data, assignment)
    task = data.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"config key 'task' must be one of {tuple(TASKS)}, got {task!r}")
    return from_dict(TASKS[task], data)


