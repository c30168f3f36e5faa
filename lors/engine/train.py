"""The model-agnostic training epoch.

The loop knows nothing of the model or the task: it calls ``compute_loss(model, batch)``,
clips gradients, sets the learning rate per step from ``lr_fn(step)``, and stops on a
non-finite loss. Task-specific losses and evaluation live in :mod:`lors.engine.tasks`.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, Optional

import torch
from torch import nn

from .optim import set_lr


def autocast_for(device: torch.device):
    """bf16 autocast on GPU, nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, compute_loss: Callable,
                    lr_fn: Callable[[int], float], step: int, device: torch.device,
                    clip_grad: Optional[float] = None, progress=None,
                    regularizer: Optional[Callable[[], torch.Tensor]] = None,
                    step_hook: Optional[Callable[[int], Optional[tuple]]] = None) -> tuple[dict, int]:
    """Train for one pass over ``loader``; returns ({"loss", "lr", "samples_per_s", "epoch_time"}, next step).

    ``compute_loss(model, batch) -> (loss, batch size)`` moves the batch to the device and
    computes the loss; ``progress`` is an optional tqdm bar updated with loss, lr and
    throughput. ``regularizer()`` is added to the loss (the reported loss excludes it).
    ``step_hook(step)`` runs after each optimizer step; if it returns ``(model, optimizer)``
    those replace the current ones (for hooks that change the parameters, e.g. LCT re-truncation).
    """
    model.train()
    total_loss, total_n, t0 = 0.0, 0, time.perf_counter()
    lr = lr_fn(step)
    for batch in loader:
        lr = lr_fn(step)
        set_lr(optimizer, lr)
        loss, n = compute_loss(model, batch)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()} at step {step}; stopping")
        optimizer.zero_grad(set_to_none=True)
        (loss + regularizer() if regularizer is not None else loss).backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        step += 1
        if step_hook is not None:
            replaced = step_hook(step)
            if replaced is not None:
                model, optimizer = replaced
        total_loss += loss.item() * n
        total_n += n
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}",
                                 img_s=f"{total_n / (time.perf_counter() - t0):.0f}")
    elapsed = time.perf_counter() - t0
    return {"loss": total_loss / max(1, total_n), "lr": lr, "samples_per_s": total_n / elapsed,
            "epoch_time": elapsed}, step
