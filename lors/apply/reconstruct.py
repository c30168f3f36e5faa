"""Block-wise reconstruction: train one compressed block to reproduce the original block's outputs.

After the closed-form fit (:mod:`lors.apply.sequential`), block ``i`` of the compressed network still differs from
the original: its factors were fitted layer by layer, each to a least-squares target, while what matters is the
block's output. :func:`reconstruct_block` trains every parameter of the block (the kept factors, biases and norms)
with Adam to bring ``block(x_c)`` toward ``original(x_o)`` on cached calibration inputs -- ``x_c`` the inputs the
compressed blocks below make, ``x_o`` the original network's -- as BRECQ and OmniQuant do for quantisation.

The loss is a relative squared error of the block's output over the real (unpadded) tokens, in one of two weightings
(:data:`RECON_LOSSES`):

- ``"token"``: each token's error relative to its own target, ``mean_t ||y'_t - y_t||^2 / ||y_t||^2``. The next block
  reads its input through an RMS/LayerNorm, which divides each token by its own norm, so this is the error it sees.
- ``"total"``: ``sum_t ||y'_t - y_t||^2 / sum_t ||y_t||^2``. Pretrained LMs carry a few tokens of enormous norm
  (SmolLM2's first token: ~24,000 against a median of ~190 after block 16 of 30, 98 % of the summed square), so this
  weighting spends nearly all of its effort on them.

The block's error on all cached batches is measured before and after; if training raised it, the closed-form start
is put back, so reconstruction never makes a block worse on its calibration data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

RECON_LR = 1e-3  # Adam's lr, cosine-decayed to 0 over a block's steps (best of 1e-4, 3e-4, 1e-3 on SmolLM2)
RECON_LOSSES = ("token", "total")
RECON_LOSS = "token"  # these functions' default; lors.compress picks per kind (lors.compression.config)


@dataclass
class BlockFit:
    """What :func:`reconstruct_block` did to one block: errors before / after and the steps it kept."""

    before: float   # relative output error of the closed-form start
    after: float    # ... after training (== before when the start was kept)
    steps: int      # steps whose result was kept (0: the start was put back)


def run_block(block: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """One block's output hidden states for one recorded call (the first element of a tuple output)."""
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _check_loss(loss: str) -> None:
    if loss not in RECON_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(RECON_LOSSES)}, got {loss!r}")


def _error_terms(out: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor], loss: str):
    """(numerator, denominator) of the relative error over the real tokens of one batch: ``"total"``, the summed
    squared error and summed squared target; ``"token"``, the summed per-token ratios and the token count."""
    err, ref = (out - target).pow(2).sum(-1), target.pow(2).sum(-1)
    if mask is not None:
        keep = mask.bool()
        err, ref = err[keep], ref[keep]
    if loss == "token":
        return (err / ref.clamp_min(1e-30)).sum(), torch.tensor(float(err.numel()))
    return err.sum(), ref.sum()


@torch.no_grad()
def relative_error(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                   masks: Optional[Sequence] = None, loss: str = RECON_LOSS) -> float:
    """The relative error of ``outputs`` against ``targets`` (per batch) over every batch's real tokens: ``"total"``,
    ``sum ||out - y||^2 / sum ||y||^2``; ``"token"``, the mean over tokens of ``||out_t - y_t||^2 / ||y_t||^2``."""
    _check_loss(loss)
    num = den = 0.0
    for b, (out, t) in enumerate(zip(outputs, targets)):
        e, r = _error_terms(out, t, masks[b] if masks is not None else None, loss)
        num, den = num + float(e), den + float(r)
    return num / max(den, 1e-30)


@torch.no_grad()
def block_error(block: nn.Module, inputs: Sequence[tuple], targets: Sequence[torch.Tensor],
                masks: Optional[Sequence] = None, loss: str = RECON_LOSS) -> float:
    """:func:`relative_error` of ``block``'s outputs on ``inputs`` (one call per batch) against ``targets``."""
    return relative_error([run_block(block, *x) for x in inputs], targets, masks, loss)


def reconstruct_block(block: nn.Module, inputs: Sequence[tuple], targets: Sequence[torch.Tensor],
                      masks: Optional[Sequence] = None, steps: int = 64, lr: float = RECON_LR,
                      loss: str = RECON_LOSS) -> BlockFit:
    """Train ``block``'s parameters for ``steps`` Adam steps (one cached batch per step, in order, cycling) so that
    ``block(*inputs[b])`` approaches ``targets[b]``; keep the result only if the error over all batches fell.

    Args:
        inputs: per batch ``(hidden, args, kwargs)``, the block's call (hidden states of the compressed network).
        targets: per batch the original block's output on the original network's hidden states.
        masks: per batch an attention mask (B, T) or ``None``; padded tokens are left out of the loss.
        loss: the error's weighting, ``"token"`` or ``"total"`` (module docstring); trained and judged alike.
    """
    _check_loss(loss)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not inputs or len(inputs) != len(targets):
        raise ValueError(f"need one target per input batch, got {len(inputs)} inputs and {len(targets)} targets")
    masks = list(masks) if masks is not None else [None] * len(inputs)
    was_training = block.training
    block.eval()  # no dropout: the target is deterministic
    before = block_error(block, inputs, targets, masks, loss)
    params = [p for p in block.parameters() if p.is_floating_point()]
    if steps == 0 or not params:
        block.train(was_training)
        return BlockFit(before, before, 0)
    start = {k: v.detach().clone() for k, v in block.state_dict().items()}
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    scale = [float(_error_terms(t, t, m, loss)[1]) for t, m in zip(targets, masks)]  # each batch's denominator
    try:
        with torch.enable_grad():
            for step in range(steps):
                b = step % len(inputs)
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                err, _ = _error_terms(run_block(block, *inputs[b]), targets[b], masks[b], loss)
                objective = err / max(scale[b], 1e-30)
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
            p.grad = None
    after = block_error(block, inputs, targets, masks, loss)
    if not after < before:  # training did not help on the calibration data: keep the closed-form start
        block.load_state_dict(start)
        after, steps = before, 0
    block.train(was_training)
    return BlockFit(before, after, steps)
