"""The one training loop: seeding, optimisation, callbacks, per-epoch evaluation, checkpoints, resume, DDP or FSDP.

:class:`Trainer` knows no model, data set or task. It receives a model (or a zero-argument
factory, built after ``torch.manual_seed(seed)``), a training loader, an optional evaluation
loader, a task object with ``loss(model, batch, device) -> (loss, batch size)`` and
``evaluate(model, loader, device) -> metrics``, a :class:`~lors.engine.config.TrainConfig`
and callbacks (:mod:`lors.engine.callbacks`).

Determinism: the torch RNG is re-seeded from (seed, epoch) at the start of every epoch and
the loader's sampler shuffles by (seed, epoch) (``set_epoch``), so a resumed run continues
exactly as the uninterrupted run would have. The learning rate follows a linear warm-up and a
cosine decay per optimizer step (:func:`lr_at`).
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn
from tqdm import tqdm

from ..accounting import count_parameters
from ..optim import balance_shared_gradients, param_groups, set_lr
from . import distributed
from .callbacks import Callback
from .checkpoint import checkpoint_meta, optimizer_from_flat, read_checkpoint, restore_model, save_checkpoint
from .fsdp import fsdp_wrap, full_optimizer_state_dict, full_state_dict, shard_optimizer_state_dict
from .config import TrainConfig


def pick_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


def autocast_for(device: torch.device):
    """bf16 autocast on GPU, nothing on CPU (tasks run their forward passes under it)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


PRECISIONS = ("fp32", "bf16-mixed")  # bf16-mixed: matmuls in bfloat16 under autocast, weights and optimizer fp32


def precision_context(device: torch.device, precision: str):
    """The autocast a ``precision`` of :data:`PRECISIONS` asks for on ``device`` (``fp32``: none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()


def native_bf16(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 natively (a CUDA GPU that supports it; an x86 CPU with AVX512-BF16 or
    AMX), i.e. whether ``bf16-mixed`` is faster there than ``fp32`` rather than emulated."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no cheap way to tell, so no
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def show_progress(enabled: bool) -> bool:
    """Progress bars only when asked for and both stdout and stderr are terminals (no bar redraws in logs)."""
    return enabled and sys.stdout.isatty() and sys.stderr.isatty()


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Runs ``task`` on a model for ``config.epochs`` epochs (or ``config.max_steps`` steps).

    Args:
        config: the engine's settings.
        task: loss and evaluation (:mod:`lors.tasks`).
        run_dir: where ``last.json`` + tensors (after every epoch) and the callbacks' files go
            (default ``config.output_dir``).
        callbacks: :class:`~lors.engine.callbacks.Callback` objects, called in order.
        log: where progress lines go (main process only).
        run_config: a JSON-able description of the run stored in every checkpoint (e.g. the YAML config).
        checkpoints: write a checkpoint after every epoch (``False``: nothing is written by the Trainer).
        epoch_seed: the torch seed set at the start of epoch ``e`` (default ``seed * 100003 + e``); it decides
            every random draw of the epoch (dropout, augmentation), so it is also what resume relies on.
    """

    def __init__(self, config: TrainConfig, task, run_dir: Union[str, Path, None] = None,
                 callbacks: tuple[Callback, ...] | list[Callback] = (), log: Callable[[str], None] = print,
                 run_config: Optional[dict] = None, checkpoints: bool = True,
                 epoch_seed: Optional[Callable[[int], int]] = None):
        self.config, self.task, self.callbacks, self._log = config, task, list(callbacks), log
        self.run_dir = Path(run_dir if run_dir is not None else config.output_dir)
        self.run_config, self.checkpoints = run_config, checkpoints
        self.epoch_seed = epoch_seed or (lambda epoch: config.seed * 100_003 + epoch)
        self.model: Optional[nn.Module] = None
        self.wrapped: Optional[nn.Module] = None  # the model as trained (DDP wrapper under torchrun)
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.device = pick_device(config.device)
        self.rank, self.world = 0, 1
        self.epoch, self.step, self.history = 0, 0, []
        self._rebuild = False

    # -- helpers for callbacks ------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        """True when this run shards the model (``train.strategy: fsdp`` with more than one process)."""
        return self.config.strategy == "fsdp" and self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def info(self, message: str) -> None:
        if self.is_main:
            self._log(message)

    def warn(self, message: str) -> None:
        self.info(f"warning: {message}")

    def request_optimizer_rebuild(self) -> None:
        """Ask for a fresh optimizer (and DDP wrapper) over the current parameters, made before the next step."""
        self._rebuild = True

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self, model: Union[nn.Module, Callable[[], nn.Module]], train_loader, eval_loader=None,
            resume: bool = False) -> list[dict]:
        """Train; returns the history (one row per epoch). ``resume=True`` continues from ``run_dir/last.json``."""
        cfg = self.config
        self.rank, self.world = distributed.init_distributed(self.device)
        self.epoch, self.step, self.history, self.optimizer = 0, 0, [], None
        for message in cfg.warnings():
            self.warn(message)
        torch.manual_seed(cfg.seed)
        self.model = model() if callable(model) and not isinstance(model, nn.Module) else model
        meta, tensors = self._restore() if resume else (None, None)
        if resume and self.epoch >= cfg.epochs:
            self.info(f"run {self.run_dir} already finished ({self.epoch} of {cfg.epochs} epochs); nothing to "
                      "resume. Raise train.epochs to train longer, or use a new output directory")
            return self.history
        self.model.to(self.device)
        if cfg.shared_grad_balance and balance_shared_gradients(self.model) == 0:
            self.warn("train.shared_grad_balance is true but the model has no LORS stacks; it has no effect")
        if self.sharded:
            fsdp_wrap(self.model)  # in place; the optimizer is built over the sharded parameters
        self._build_optimizer()
        if meta is not None and "optimizer_groups" in meta:
            state = optimizer_from_flat(tensors, meta["optimizer_groups"])
            self.optimizer.load_state_dict(shard_optimizer_state_dict(self.optimizer, state) if self.sharded else state)
        total = cfg.max_steps or cfg.epochs * len(train_loader)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else cfg.warmup_epochs * len(train_loader)
        lr_fn = lambda s: lr_at(s, total, warmup, cfg.lr, cfg.min_lr)
        self._header(train_loader, eval_loader)
        self._call("on_fit_start")
        for epoch in range(self.epoch, cfg.epochs):
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                break
            self.epoch = epoch
            self._call("on_epoch_start", epoch)
            self._rebuild_if_requested()
            torch.manual_seed(self.epoch_seed(epoch))
            for obj in (train_loader, getattr(train_loader, "sampler", None)):
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            stats = self._train_epoch(train_loader, lr_fn)
            self._end_epoch(epoch, stats, eval_loader)
        self._call("on_fit_end")
        return self.history

    def _train_epoch(self, loader, lr_fn) -> dict:
        """One pass over ``loader``: {"loss", "lr", "samples_per_s", "epoch_time"}."""
        cfg = self.config
        self.wrapped.train()
        bar = tqdm(total=len(loader), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not show_progress(cfg.progress and self.is_main))
        total_loss, total_n, t0, lr = 0.0, 0, time.perf_counter(), lr_fn(self.step)
        for batch in loader:
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                break
            lr = lr_fn(self.step)
            set_lr(self.optimizer, lr)
            loss, n = self.task.loss(self.wrapped, batch, self.device)
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss {loss.item()} at step {self.step}; stopping")
            self.optimizer.zero_grad(set_to_none=True)
            extra = [t for t in (cb.extra_loss(self) for cb in self.callbacks) if t is not None]
            (loss + sum(extra) if extra else loss).backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(self.wrapped.parameters(), cfg.clip_grad)
            self.optimizer.step()
            self.step += 1
            self._call("on_step_end", self.step)
            self._rebuild_if_requested()
            total_loss, total_n = total_loss + loss.item() * n, total_n + n
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}",
                            per_s=f"{total_n / (time.perf_counter() - t0):.0f}")
        bar.close()
        elapsed = time.perf_counter() - t0
        return {"loss": total_loss / max(1, total_n), "lr": lr, "samples_per_s": total_n / elapsed,
                "epoch_time": elapsed}

    def _end_epoch(self, epoch: int, stats: dict, eval_loader) -> None:
        """Evaluate, record the row, tell the callbacks, checkpoint."""
        metrics = self.task.evaluate(self.model, eval_loader, self.device)
        row = {"epoch": epoch + 1, "train_loss": round(stats["loss"], 6),
               **{k: round(v, 4) for k, v in metrics.items()}, "lr": float(f"{stats['lr']:.6g}"),
               "epoch_time": round(stats["epoch_time"], 3), "samples_per_s": round(stats["samples_per_s"], 1),
               "params": count_parameters(self.model)}
        self.history.append(row)
        self.info(" ".join(f"{k}={v}" for k, v in row.items()))
        self._call("on_epoch_end", epoch, row)
        if self.checkpoints:
            gathered = {}  # a sharded model is gathered by every rank (collectives), written by the main one
            if self.sharded:
                gathered = {"model_state": full_state_dict(self.model),
                            "optimizer_state": full_optimizer_state_dict(self.optimizer)}
            if self.is_main:
                save_checkpoint(self.run_dir, self.model, checkpoint_meta(
                    self.model, self.run_config, epoch, self.step, self.history, self.world,
                    {type(cb).__name__: cb.state_dict() for cb in self.callbacks}), self.optimizer, **gathered)
        distributed.barrier()

    # -- setup ------------------------------------------------------------------------------------
    def _restore(self):
        """Load ``run_dir/last.json`` into the model, the counters and the callbacks; returns (meta, tensors)."""
        meta, tensors = read_checkpoint(self.run_dir / "last.json")
        restore_model(self.model, meta, tensors)
        states = meta.get("callbacks")
        if states is None and "lct_done" in meta:  # checkpoints written before callbacks kept their own state
            states = {"LctSchedule": {"done": meta["lct_done"], "final_ranks": meta.get("lct_final_ranks", {})}}
        for cb in self.callbacks:
            cb.load_state_dict((states or {}).get(type(cb).__name__, {}))
        torch.set_rng_state(tensors["rng.torch"])
        self.epoch, self.step, self.history = meta["epoch"] + 1, meta["step"], meta["history"]
        if self.epoch < self.config.epochs:
            self.info(f"resuming from {self.run_dir / 'last.json'} at epoch {self.epoch + 1}")
        return meta, tensors

    def _build_optimizer(self) -> None:
        """AdamW over :func:`lors.param_groups` (shared LORS tensors at ``shared_lr_scale``), and the DDP wrap."""
        cfg = self.config
        if self.sharded and self.optimizer is not None:
            raise RuntimeError("a callback replaced parameters (e.g. the LCT schedule factorising layers) during a "
                               "sharded run; train.strategy 'fsdp' supports fixed parameters only: use 'ddp'")
        exempt = frozenset().union(*(cb.no_decay(self.model) for cb in self.callbacks))
        groups = param_groups(self.model, cfg.lr, cfg.weight_decay, cfg.shared_lr_scale, cfg.private_lr_scale,
                              exempt=exempt, factor_lr_scale=cfg.factor_lr_scale,
                              factor_lr_rule=cfg.factor_lr_rule)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.wrapped = self.model if self.sharded else distributed.wrap(self.model, self.world)

    def _rebuild_if_requested(self) -> None:
        if self._rebuild:
            self._rebuild = False
            self._build_optimizer()

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _header(self, train_loader, eval_loader) -> None:
        sizes = [len(loader.dataset) if hasattr(loader, "dataset") else None for loader in (train_loader, eval_loader)]
        data = f", {sizes[0]} train / {sizes[1]} test samples" if None not in sizes else ""
        self.info(f"run {self.run_dir}: {count_parameters(self.model):,} parameters{data}, {self.config.epochs} "
                  f"epochs, device {self.device}, world size {self.world}")
