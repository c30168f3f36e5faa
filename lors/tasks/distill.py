"""Recover a compressed model by distillation: train the student to reproduce the teacher's outputs.

:class:`DistillTask` is a task for the :class:`~lors.engine.Trainer` whose loss compares the
student's outputs to the teacher's (teacher in eval mode, under ``no_grad``).
``distill(student, teacher, batches, steps)`` runs it with the same Trainer as every other
task: the shared-aware parameter groups of :func:`lors.param_groups`, a warm-up + cosine
learning rate, gradient clipping, a progress bar, and a checkpoint after every chunk of
``checkpoint_every`` steps (the Trainer's epochs); ``resume=True`` continues from it exactly
as the uninterrupted run would have.

Losses (``loss=``), on Hugging Face-style outputs (``last_hidden_state``, masked by the batch's
``attention_mask``) or on plain tensors:

* ``"mse"``: mean squared error of the token states, divided by the teacher's mean square;
* ``"cosine"``: 1 - cosine of the mean-pooled embeddings (sentence encoders);
* ``"mse+cosine"`` (default): their sum;
* ``"kl"`` (causal LMs): ``T^2 KL(teacher || student)`` of the next-token distributions at temperature ``T``,
  per token (forward: :func:`logits`);
* ``"kl+hidden"``: that plus the MSE term over every layer's hidden states (forward: :func:`logits_and_hidden`).

Cached teacher (``"kl"`` only): :func:`cache_topk` runs the teacher once over the batches and stores, per token, its
``k`` most likely next tokens and their log-probabilities (at the temperature) in the batch dicts
(``TOPK_KEYS``). :class:`DistillTask` then skips the teacher's forward and scores :func:`topk_kl_loss`: the KL over
those ``k`` tokens plus one bucket holding the rest of the vocabulary's mass. With ``k`` the vocabulary size it equals
:func:`kl_loss` exactly; the cache can be saved once and reused by every student of the same teacher.

With ``forward=all_hidden_states`` the MSE term averages over every layer's hidden states
(intermediate-layer distillation) and the cosine term uses the last layer.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.callbacks import CsvLogger
from ..engine.config import TrainConfig
from ..engine.trainer import PRECISIONS, Trainer, precision_context

LOSSES = ("mse", "cosine", "mse+cosine", "kl", "kl+hidden")


def outputs(model: nn.Module, batch) -> torch.Tensor:
    """The model's main output for a batch: ``last_hidden_state`` of HF outputs, else the tensor itself."""
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0] if isinstance(out, (tuple, list)) else out


def all_hidden_states(model: nn.Module, batch) -> torch.Tensor:
    """Every layer's hidden states of a Hugging Face model, stacked: (L + 1, B, T, D), last layer last."""
    return torch.stack(model(**batch, output_hidden_states=True).hidden_states)


def logits(model: nn.Module, batch) -> torch.Tensor:
    """Next-token logits (B, T, V) of a causal LM (``.logits`` of HF outputs, else the output itself)."""
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    return out.logits if hasattr(out, "logits") else out


def logits_and_hidden(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), every layer's hidden states (L + 1, B, T, D)) of a Hugging Face causal LM."""
    out = model(**batch, output_hidden_states=True)
    return out.logits, torch.stack(out.hidden_states)


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: Optional[torch.Tensor],
            temperature: float = 1.0) -> torch.Tensor:
    """``T^2 KL(softmax(t / T) || softmax(s / T))`` summed over the vocabulary, averaged over (unmasked) tokens."""
    s = F.log_softmax(_scaled(student_logits, temperature), -1)
    t = F.log_softmax(_scaled(teacher_logits, temperature), -1)
    per_token = (t.exp() * (t - s)).sum(-1)  # (B, T)
    if mask is not None:
        per_token = per_token[mask.bool()]
    return per_token.mean() * temperature ** 2


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / T`` in float32; at ``T = 1`` no division (a pass over B x T x V numbers each way, ~6 % of a SmolLM2
    distillation step in a one-thread profile, for a result identical to the bit)."""
    logits = logits.float()
    return logits if temperature == 1 else logits / temperature


TOPK_KEYS = ("teacher_logp", "teacher_index")


def topk_kl_loss(student_logits: torch.Tensor, teacher_logp: torch.Tensor, teacher_index: torch.Tensor,
                 mask: Optional[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """``T^2 KL`` between the teacher's cached top-k distribution, with the rest of its mass as one extra bucket,
    and the student's distribution over the same buckets; averaged over (unmasked) tokens.

    ``teacher_logp`` (B, T, k) are the teacher's log-probabilities at temperature ``T`` of the tokens
    ``teacher_index`` (B, T, k); when ``k`` is the vocabulary the rest bucket is empty and this is :func:`kl_loss`."""
    s = F.log_softmax(_scaled(student_logits, temperature), -1)
    index = teacher_index.long()
    s_k, t_k = s.gather(-1, index), teacher_logp.float()
    per_token = (t_k.exp() * (t_k - s_k)).sum(-1)
    if index.shape[-1] < s.shape[-1]:  # the rest of the vocabulary, one bucket on each side
        t_rest = (1 - t_k.exp().sum(-1)).clamp_min(0)
        s_rest = (1 - s_k.exp().sum(-1)).clamp_min(1e-12)
        per_token = per_token + torch.where(t_rest > 0, t_rest * (t_rest.clamp_min(1e-12).log() - s_rest.log()),
                                            torch.zeros_like(t_rest))
    if mask is not None:
        per_token = per_token[mask.bool()]
    return per_token.mean() * temperature ** 2


@torch.no_grad()
def cache_topk(teacher: nn.Module, batches: Sequence[dict], k: int, temperature: float = 1.0,
               forward: Optional[Callable] = None, log: Optional[Callable[[str], None]] = None,
               precision: str = "fp32") -> list[dict]:
    """Copies of ``batches`` (dicts) with the teacher's top-``k`` next-token log-probabilities at ``temperature``
    and their token ids added (``TOPK_KEYS``: float32 (B, T, k) and int32 (B, T, k)); one teacher pass, under the
    autocast of ``precision`` (the one the student trains in: the teacher a full-logit run would use)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    teacher.eval()
    cached = []
    for i, batch in enumerate(batches):
        if not isinstance(batch, dict):
            raise TypeError("cache_topk needs dict batches (Hugging Face model inputs)")
        with precision_context(next(iter(batch.values())).device, precision):
            out = (forward or logits)(teacher, batch)
        logp = F.log_softmax(_scaled(out, temperature), -1)
        values, index = logp.topk(min(k, logp.shape[-1]), dim=-1)
        cached.append({**batch, TOPK_KEYS[0]: values, TOPK_KEYS[1]: index.to(torch.int32)})
        if log and (i + 1) % 50 == 0:
            log(f"  teacher top-{k}: {i + 1}/{len(batches)} batches")
    return cached


def mean_pool(hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over tokens (B, T, D) -> (B, D), counting only tokens where ``mask`` is 1."""
    if hidden.ndim == 2:
        return hidden
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


def distill_loss(student_out, teacher_out, mask: Optional[torch.Tensor], kind: str = "mse+cosine",
                 temperature: float = 1.0) -> torch.Tensor:
    """The distillation loss ``kind`` (see the module docstring) between student and teacher outputs
    (``(logits, hidden states)`` pairs for ``"kl+hidden"``)."""
    if kind.startswith("kl"):
        s_logits, t_logits = (student_out[0], teacher_out[0]) if kind == "kl+hidden" else (student_out, teacher_out)
        total = kl_loss(s_logits, t_logits, mask, temperature)
        if kind == "kl+hidden":
            total = total + distill_loss(student_out[1], teacher_out[1], mask, "mse")
        return total
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


def default_forward(loss: str) -> Callable:
    """The forward a loss needs: logits for ``"kl"``, logits and hidden states for ``"kl+hidden"``, else
    :func:`outputs`."""
    return {"kl": logits, "kl+hidden": logits_and_hidden}.get(loss, outputs)


class DistillTask:
    """Loss: :func:`distill_loss` between ``forward(student, batch)`` and ``forward(teacher, batch)``;
    evaluation: ``evaluate(student)`` (a dict of metrics) when given, else nothing."""

    collate_fn = None

    def __init__(self, teacher: nn.Module, loss: str = "mse+cosine",
                 forward: Callable[[nn.Module, object], torch.Tensor] = None,
                 evaluate: Optional[Callable[[nn.Module], dict]] = None, temperature: float = 1.0,
                 dropout: bool = False, precision: str = "fp32"):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.teacher, self.kind, self.evaluate_fn, self.temperature = teacher, loss, evaluate, temperature
        self.dropout, self.precision = dropout, precision
        self.forward = forward or default_forward(loss)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    def loss(self, model: nn.Module, batch, device: torch.device):
        if not self.dropout:  # the teacher runs in eval mode: the student matches that deterministic function
            model.eval()
        batch = _to(batch, device)
        autocast = lambda: precision_context(device, self.precision)  # noqa: E731  (the losses run in fp32)
        if isinstance(batch, dict) and TOPK_KEYS[0] in batch:  # cached teacher: no teacher forward
            if self.kind != "kl":
                raise ValueError(f"cached top-k teacher outputs need loss 'kl', not {self.kind!r}")
            inputs = {k: v for k, v in batch.items() if k not in TOPK_KEYS}
            with autocast():
                out = self.forward(model, inputs)
            return topk_kl_loss(out, batch[TOPK_KEYS[0]], batch[TOPK_KEYS[1]], inputs.get("attention_mask"),
                                self.temperature), _batch_size(inputs)
        with torch.no_grad(), autocast():
            target = self.forward(self.teacher, batch)
        with autocast():
            out = self.forward(model, batch)
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        return distill_loss(_fp32(out), _fp32(target), mask, self.kind, self.temperature), _batch_size(batch)

    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict:
        if self.evaluate_fn is None:
            return {}
        metrics = self.evaluate_fn(model)
        model.train()
        return metrics


class Chunks:
    """The distillation "epochs": chunk ``e`` is steps ``e * size .. (e + 1) * size - 1`` (at most ``steps`` in
    all), and step ``s`` uses ``batches[s % len(batches)]``."""

    def __init__(self, batches: Sequence, size: int, steps: int):
        self.batches, self.size, self.steps, self.epoch = batches, size, steps, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        start = self.epoch * self.size
        for s in range(start, min(start + self.size, self.steps)):
            yield self.batches[s % len(self.batches)]


def distill(student: nn.Module, teacher: nn.Module, batches: Sequence, steps: int, lr: float = 1e-4,
            weight_decay: float = 0.0, loss: str = "mse+cosine", warmup_steps: Optional[int] = None,
            min_lr: float = 0.0, shared_lr_scale="1/sqrt(N)", clip_grad: Optional[float] = 1.0,
            run_dir: Optional[str | Path] = None, checkpoint_every: int = 100, resume: bool = False, seed: int = 0,
            progress: bool = True, evaluate: Optional[Callable[[nn.Module], dict]] = None,
            forward: Optional[Callable[[nn.Module, object], torch.Tensor]] = None, temperature: float = 1.0,
            dropout: bool = False, precision: str = "fp32", log: Callable[[str], None] = print) -> list[dict]:
    """Train ``student`` to match ``teacher`` on ``batches`` for ``steps`` optimizer steps; returns the history.

    Args:
        batches: a sequence of input batches (dicts for HF models); step ``s`` uses
            ``batches[s % len(batches)]``.
        loss: one of ``LOSSES`` (``"kl"`` / ``"kl+hidden"`` for causal LMs, at ``temperature``).
        warmup_steps: linear warm-up (default 5% of ``steps``), then cosine decay to ``min_lr``.
        shared_lr_scale: learning-rate rule for shared LORS weights (see :func:`lors.param_groups`).
        run_dir: where checkpoints (``last.json`` + tensors) and ``log.csv`` go; needed for ``resume``.
            Without it, the run writes nothing.
        checkpoint_every: steps per chunk; after each chunk: ``evaluate(student)`` (if given), a history
            row, a checkpoint.
        resume: continue from ``run_dir/last.json`` (the student must be converted the same way).
        forward: ``forward(model, batch) -> output`` (default: :func:`default_forward` of ``loss``).
        dropout: train the student with its dropout on (default off: the student runs in eval mode, as the teacher
            does, and learns the teacher's deterministic function; MiniLM at 50 % lost agreement with dropout on).
        precision: ``"fp32"`` or ``"bf16-mixed"`` (forward and backward matmuls in bfloat16 under autocast; the
            weights, their gradients, the optimizer and the loss stay fp32): faster than fp32 for SmolLM2 on a CPU
            with AVX512-BF16 (``benchmarks/distill_speed.py``, BENCHMARKS.md); emulated, hence slower, without it.

    Returns one row per chunk: ``step`` (steps done), then the Trainer's row: ``epoch`` (= chunk), ``train_loss``
    (mean over the chunk), whatever ``evaluate`` returned, ``lr``, ``epoch_time``, ``samples_per_s``, ``params``.
    """
    if steps <= 0 or checkpoint_every <= 0:
        raise ValueError(f"steps and checkpoint_every must be positive, got {steps} and {checkpoint_every}")
    if len(batches) == 0:
        raise ValueError("batches is empty")
    if resume and run_dir is None:
        raise ValueError("resume=True needs run_dir")
    device = next(student.parameters()).device
    config = TrainConfig(epochs=math.ceil(steps / checkpoint_every), max_steps=steps, lr=lr, min_lr=min_lr,
                         weight_decay=weight_decay, warmup_steps=max(1, steps // 20) if warmup_steps is None
                         else warmup_steps, clip_grad=clip_grad, seed=seed, progress=progress,
                         shared_lr_scale=shared_lr_scale, device=device.type)
    task = DistillTask(teacher, loss, forward, evaluate, temperature, dropout, precision)
    trainer = Trainer(config, task, run_dir=run_dir, callbacks=[CsvLogger(run_dir)] if run_dir else [], log=log,
                      checkpoints=run_dir is not None,
                      epoch_seed=lambda chunk: seed * 100_003 + chunk * checkpoint_every)  # keyed by its first step
    history = trainer.fit(student, Chunks(batches, checkpoint_every, steps), resume=resume)
    student.eval()
    return [{"step": min(row["epoch"] * checkpoint_every, steps), **row} for row in history]


def _fp32(out):
    """Outputs of a forward under autocast as float32 (tensors, or tuples of them)."""
    return tuple(_fp32(o) for o in out) if isinstance(out, tuple) else out.float()


def _to(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def _batch_size(batch) -> int:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch
    return int(first.shape[0])
