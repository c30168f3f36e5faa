"""Recover a compressed model by distillation: train the student to reproduce the teacher's outputs.

``distill(student, teacher, batches, steps)`` runs the engine's model-agnostic
:func:`~lors.engine.train.train_one_epoch` over chunks of ``checkpoint_every`` steps, with
a loss that compares the student's outputs to the teacher's (teacher in eval mode, under
``no_grad``). It uses the shared-aware parameter groups of :func:`lors.param_groups`, a
warm-up + cosine learning rate, gradient clipping, a progress bar, and a checkpoint after
every chunk (safetensors + JSON); ``resume=True`` continues from it exactly as the
uninterrupted run would have.

Losses (``loss=``), on Hugging Face-style outputs (``last_hidden_state``, masked by the batch's
``attention_mask``) or on plain tensors:

* ``"mse"``: mean squared error of the token states, divided by the teacher's mean square;
* ``"cosine"``: 1 - cosine of the mean-pooled embeddings (sentence encoders);
* ``"mse+cosine"`` (default): their sum.

With ``forward=all_hidden_states`` the MSE term averages over every layer's hidden states
(intermediate-layer distillation) and the cosine term uses the last layer.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .engine.checkpoint import load_model_state, optimizer_from_flat, read_checkpoint, save_checkpoint
from .engine.fit import show_progress
from .engine.optim import lr_at
from .engine.train import train_one_epoch
from .optim import param_groups

LOSSES = ("mse", "cosine", "mse+cosine")


def outputs(model: nn.Module, batch) -> torch.Tensor:
    """The model's main output for a batch: ``last_hidden_state`` of HF outputs, else the tensor itself."""
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0] if isinstance(out, (tuple, list)) else out


def all_hidden_states(model: nn.Module, batch) -> torch.Tensor:
    """Every layer's hidden states of a Hugging Face model, stacked: (L + 1, B, T, D), last layer last."""
    return torch.stack(model(**batch, output_hidden_states=True).hidden_states)


def mean_pool(hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over tokens (B, T, D) -> (B, D), counting only tokens where ``mask`` is 1."""
    if hidden.ndim == 2:
        return hidden
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


def distill_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, mask: Optional[torch.Tensor],
                 kind: str = "mse+cosine") -> torch.Tensor:
    """The distillation loss ``kind`` (see the module docstring) between student and teacher outputs."""
    total = student_out.new_zeros(())
    if "mse" in kind:  # per layer when outputs are stacked hidden states (L, B, T, D)
        layers = student_out if student_out.ndim == 4 else student_out[None]
        targets = teacher_out if teacher_out.ndim == 4 else teacher_out[None]
        for s, t in zip(layers, targets):
            err = (s - t).pow(2).mean(-1)
            if mask is not None and s.ndim == 3:
                err = err[mask.bool()]
            total = total + err.mean() / t.pow(2).mean() / len(layers)
        student_out, teacher_out = layers[-1], targets[-1]
    if "cosine" in kind:
        cos = F.cosine_similarity(mean_pool(student_out, mask), mean_pool(teacher_out, mask), dim=-1)
        total = total + (1 - cos).mean()
    return total


def distill(student: nn.Module, teacher: nn.Module, batches: Sequence, steps: int, lr: float = 1e-4,
            weight_decay: float = 0.0, loss: str = "mse+cosine", warmup_steps: Optional[int] = None,
            min_lr: float = 0.0, shared_lr_scale="1/sqrt(N)", clip_grad: Optional[float] = 1.0,
            run_dir: Optional[str | Path] = None, checkpoint_every: int = 100, resume: bool = False, seed: int = 0,
            progress: bool = True, evaluate: Optional[Callable[[nn.Module], dict]] = None,
            forward: Callable[[nn.Module, object], torch.Tensor] = outputs,
            log: Callable[[str], None] = print) -> list[dict]:
    """Train ``student`` to match ``teacher`` on ``batches`` for ``steps`` optimizer steps; returns the history.

    Args:
        batches: a sequence of input batches (dicts for HF models); step ``s`` uses
            ``batches[s % len(batches)]``.
        loss: ``"mse"``, ``"cosine"`` or ``"mse+cosine"``.
        warmup_steps: linear warm-up (default 5% of ``steps``), then cosine decay to ``min_lr``.
        shared_lr_scale: learning-rate rule for shared LORS weights (see :func:`lors.param_groups`).
        run_dir: where checkpoints (``last.json`` + tensors) and ``log.csv`` go; needed for ``resume``.
        checkpoint_every: steps per chunk; after each chunk: ``evaluate(student)`` (if given), a history
            row, a checkpoint.
        resume: continue from ``run_dir/last.json`` (the student must be converted the same way).
        forward: ``forward(model, batch) -> output tensor`` (default: :func:`outputs`).

    Returns one dict per chunk: ``step``, ``loss`` (mean over the chunk), ``lr``, ``seconds`` and whatever
    ``evaluate`` returned.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if steps <= 0 or checkpoint_every <= 0:
        raise ValueError(f"steps and checkpoint_every must be positive, got {steps} and {checkpoint_every}")
    if len(batches) == 0:
        raise ValueError("batches is empty")
    if resume and run_dir is None:
        raise ValueError("resume=True needs run_dir")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    device = next(student.parameters()).device
    warmup = max(1, steps // 20) if warmup_steps is None else warmup_steps
    optimizer = torch.optim.AdamW(param_groups(student, lr, weight_decay, shared_lr_scale), lr=lr)
    step, history = 0, []
    if resume:
        meta, tensors = read_checkpoint(Path(run_dir) / "last.json")
        if meta.get("lors_conversion") != _record(student):
            raise ValueError(f"{run_dir} was written for a student converted differently; convert the student "
                             "exactly as in the interrupted run before resuming")
        load_model_state(student, tensors)
        optimizer.load_state_dict(optimizer_from_flat(tensors, meta["optimizer_groups"]))
        step, history = meta["step"], meta["history"]
        log(f"resuming distillation from {run_dir} at step {step}")

    def compute_loss(model, batch):
        batch = _to(batch, device)
        with torch.no_grad():
            target = forward(teacher, batch)
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        return distill_loss(forward(model, batch), target, mask, loss), _batch_size(batch)

    lr_fn = lambda s: lr_at(s, steps, warmup, lr, min_lr)
    bar = tqdm(total=steps, initial=step, desc="distill", disable=not show_progress(progress))
    while step < steps:
        chunk = min(checkpoint_every, steps - step)
        torch.manual_seed(seed * 100_003 + step)  # each chunk's randomness (dropout) depends only on its start
        loader = [batches[(step + i) % len(batches)] for i in range(chunk)]
        t0 = time.perf_counter()
        stats, step = train_one_epoch(student, loader, optimizer, compute_loss, lr_fn, step, device, clip_grad, bar)
        row = {"step": step, "loss": round(stats["loss"], 6), "lr": float(f"{stats['lr']:.6g}"),
               "seconds": round(time.perf_counter() - t0, 2)}
        if evaluate is not None:
            row.update(evaluate(student))
            student.train()
        history.append(row)
        log(" ".join(f"{k}={v}" for k, v in row.items()))
        if run_dir is not None:
            save_checkpoint(run_dir, student, {"step": step, "epoch": len(history), "history": history,
                                               "lors_conversion": _record(student)}, optimizer)
    bar.close()
    student.eval()
    return history


def _record(model: nn.Module):
    return getattr(model, "lors_conversion", None)


def _to(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def _batch_size(batch) -> int:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch
    return int(first.shape[0])
