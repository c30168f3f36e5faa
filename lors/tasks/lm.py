"""Language modelling as a task for the Trainer: next-token cross-entropy; loss, perplexity and bits per byte.

Works with any causal LM that returns logits (B, T, V), or an output with ``.logits`` (Hugging Face).
Bits per byte = (mean loss in nats per token) x (tokens per byte) / ln 2, comparable across tokenisers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.trainer import autocast_for


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


class LanguageModelTask:
    """Next-token loss on (x, y) batches of token ids (B, T); evaluation: ``val_loss``, ``ppl``, ``bpb``.

    ``bytes_per_token`` converts the loss to bits per byte (1 for the byte tokenizer)."""

    collate_fn = None

    def __init__(self, bytes_per_token: float = 1.0):
        self.bytes_per_token = bytes_per_token

    def loss(self, model: nn.Module, batch, device: torch.device):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with autocast_for(device):
            logits = logits_of(model, x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()), x.shape[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict:
        model.eval()
        total, tokens = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with autocast_for(device):
                logits = logits_of(model, x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            tokens += y.numel()
        loss = total / max(1, tokens)
        return {"val_loss": loss, "ppl": math.exp(min(loss, 50.0)), "bpb": loss / self.bytes_per_token / math.log(2)}


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> dict:
    """Next-token loss and perplexity of ``model`` on token windows (N, T): every window scored on its own,
    each token predicted from the ones before it in its window (N * (T - 1) predictions)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size].to(device)
        logits = logits_of(model, x)[:, :-1]
        total += F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        count += x[:, 1:].numel()
    model.train(was_training)
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
