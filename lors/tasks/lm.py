"""Language modelling as a task for the Trainer: next-token cross-entropy; loss, perplexity and bits per byte.

Works with any causal LM that returns logits (B, T, V), or an output with ``.logits`` (Hugging Face).
Bits per byte = (summed nats of the scored target tokens) / (their summed bytes of text) / ln 2, comparable across
tokenisers and exact for whatever part of a text is scored.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.trainer import autocast_for


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


class LanguageModelTask:
    """Next-token loss on (x, y) batches of token ids (B, T); evaluation: ``val_loss``, ``ppl``, ``bpb``.

    ``token_bytes`` (V,): the bytes of text behind each token id (the tokenizer's ``token_bytes()``; None: one
    byte per token, the byte tokenizer), so bits per byte sum the bytes of the very targets scored."""

    collate_fn = None

    def __init__(self, token_bytes: Optional[torch.Tensor] = None):
        self.token_bytes = token_bytes

    def loss(self, model: nn.Module, batch, device: torch.device):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with autocast_for(device):
            logits = logits_of(model, x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()), x.shape[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict:
        model.eval()
        total, tokens, n_bytes = 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with autocast_for(device):
                logits = logits_of(model, x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            tokens += y.numel()
            n_bytes += y.numel() if self.token_bytes is None else int(self.token_bytes[y.cpu()].sum())
        loss = total / max(1, tokens)
        return {"val_loss": loss, "ppl": math.exp(min(loss, 50.0)), "bpb": total / max(1, n_bytes) / math.log(2)}


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
