"""The engine's settings: optimisation, schedule, seed, device, output (``train:`` in a YAML file).

Nothing here is specific to a model, a data set or a task: the LCT schedule's settings belong to
its callback (:class:`~lors.engine.callbacks.LctScheduleConfig`), a loss's to its task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ..errors import ConfigError, at_least, one_of, positive
from ..optim import FACTOR_LR_RULES, SHARED_LR_RULES
from .distributed import STRATEGIES

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """How the :class:`~lors.engine.Trainer` optimises: AdamW over :func:`lors.param_groups`, a linear warm-up
    and a cosine decay per step, gradient clipping, the seed, the device and where the run is written.
    Every count and rate is range-checked on construction (a :class:`~lors.errors.ConfigError` names the key)."""

    epochs: int = 30
    lr: float = 1e-3
    min_lr: float = 1e-5                # end of the cosine decay
    weight_decay: float = 0.05
    warmup_epochs: int = 3              # linear warm-up, in epochs ...
    warmup_steps: Optional[int] = None  # ... or in optimizer steps (takes precedence)
    max_steps: Optional[int] = None     # stop after this many steps (the schedule ends there); null: epochs
    clip_grad: Optional[float] = 1.0    # max gradient norm; null disables
    seed: int = 0
    output_dir: str = "runs/exp"
    device: str = "auto"                # "auto" | "cpu" | "cuda"
    # Under torchrun: "ddp" replicates the model, "fsdp" shards it (lors.fsdp_wrap: one unit per block,
    # shared LORS tensors in the root unit). One process: both train the model as it is.
    strategy: str = "ddp"
    progress: bool = True               # tqdm progress bar (on a terminal only)
    # Shared-aware optimisation: a LORS weight shared by N layers gets lr * shared_lr_scale, where
    # shared_lr_scale is a number or a rule of N: "1/sqrt(N)" (default; see RESULTS.md), "1/N", "1".
    shared_lr_scale: Union[float, str] = "1/sqrt(N)"
    private_lr_scale: float = 1.0       # lr factor of the private low-rank residual factors
    factor_lr_scale: float = 1.0        # lr factor of the LCT factors (U, V of LowRankLinear; B, A of CoLALinear)
    # ... times a per-layer rule: "1", "fan_in" (output factor x sqrt(fan-in / rank)), "rank" (x sqrt(r_min / r));
    # see lors.optim.factor_scales.
    factor_lr_rule: str = "1"
    # Rescale each layer's contribution to a shared tensor's gradient to the layers' mean size
    # (lors.balance_shared_gradients), so no single layer steers the shared weight.
    shared_grad_balance: bool = False

    def __post_init__(self):
        one_of(self.device, DEVICES, "train.device")
        one_of(self.strategy, STRATEGIES, "train.strategy")
        at_least(self.epochs, 1, "train.epochs", "a whole number of epochs")
        positive(self.lr, "train.lr")
        at_least(self.min_lr, 0, "train.min_lr")
        at_least(self.weight_decay, 0, "train.weight_decay")
        at_least(self.warmup_epochs, 0, "train.warmup_epochs", "a whole number of epochs")
        at_least(self.warmup_steps, 0, "train.warmup_steps", "a whole number of steps")
        at_least(self.max_steps, 1, "train.max_steps", "a whole number of steps")
        positive(self.clip_grad, "train.clip_grad")
        positive(self.private_lr_scale, "train.private_lr_scale")
        positive(self.factor_lr_scale, "train.factor_lr_scale")
        if self.factor_lr_rule == 1 and not isinstance(self.factor_lr_rule, bool):  # YAML reads `1` as a number
            self.factor_lr_rule = "1"
        one_of(self.factor_lr_rule, FACTOR_LR_RULES, "train.factor_lr_rule")
        scale = self.shared_lr_scale
        if isinstance(scale, str) and scale not in SHARED_LR_RULES or not isinstance(scale, str) and scale <= 0:
            raise ConfigError(f"config key 'train.shared_lr_scale' must be a positive number or one of "
                              f"{tuple(SHARED_LR_RULES)}, got {scale!r}")

    def warnings(self) -> list[str]:
        """Settings that are legal but almost certainly not what was meant."""
        if self.warmup_steps is None and self.warmup_epochs >= self.epochs:
            return [f"train.warmup_epochs={self.warmup_epochs} >= train.epochs={self.epochs}: the learning rate "
                    "never reaches train.lr and the cosine decay never starts"]
        return []
