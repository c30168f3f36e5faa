"""The engine's AdamW (shared-aware parameter groups) and the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..optim import param_groups, set_lr  # noqa: F401  (set_lr is the engine's per-step lr setter)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, exempt: frozenset = frozenset(),
                    shared_lr_scale="1/sqrt(N)", private_lr_scale: float = 1.0,
                    factor_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW over :func:`lors.param_groups` (shared LORS tensors at ``shared_lr_scale``)."""
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, shared_lr_scale, private_lr_scale,
                                          exempt=exempt, factor_lr_scale=factor_lr_scale), lr=lr)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
