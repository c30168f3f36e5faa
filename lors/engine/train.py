"""Model-agnostic epoch loops: one training epoch, one evaluation pass.

The training loop knows nothing of the model: it calls ``model(x)``, the given
``loss_fn(output, target)``, clips gradients, sets the learning rate per step
from ``lr_fn(step)``, and stops on a non-finite loss.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .optim import set_lr


def autocast_for(device: torch.device):
    """bf16 autocast on GPU, nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float):
    """Mixup / CutMix (one of them, chosen at random when both are on). Returns x, soft targets (B, classes)."""
    target = F.one_hot(y, num_classes).float()
    if mixup <= 0 and cutmix <= 0:
        return x, target
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()) < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if use_cutmix:
        H, W = x.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(H, ())), int(torch.randint(W, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]


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


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> dict:
    """Cross-entropy loss, top-1 and (when there are >= 5 classes) top-5 accuracy in percent."""
    model.eval()
    loss_sum, correct1, correct5, n, num_classes = 0.0, 0, 0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast_for(device):
            logits = model(x).float()
        num_classes = logits.shape[-1]
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, num_classes), dim=-1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(-1).sum().item()
        n += y.numel()
    out = {"test_loss": loss_sum / max(1, n), "top1": 100.0 * correct1 / max(1, n)}
    if num_classes >= 5:
        out["top5"] = 100.0 * correct5 / max(1, n)
    return out
