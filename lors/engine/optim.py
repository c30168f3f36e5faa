"""AdamW parameter groups and the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("bias", "cls_token", "pos_embed", "query_embed")


def param_groups(model: nn.Module, weight_decay: float, exempt: frozenset = frozenset()) -> list[dict]:
    """Two AdamW groups: decay for weight matrices/factors; none for norms, biases and embeddings.

    A parameter is exempt when it is 1-D (norm scales, biases), its name ends in a
    ``NO_DECAY_NAMES`` entry (covers 2-D per-layer LORS biases and token embeddings),
    or its id is in ``exempt`` (e.g. LCT factors regularised by Frobenius decay instead).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        last = name.rsplit(".", 1)[-1]
        (no_decay if p.ndim <= 1 or last in NO_DECAY_NAMES or id(p) in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    exempt: frozenset = frozenset()) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay, exempt), lr=lr)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
