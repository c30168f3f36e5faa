"""The training run: seeding, data loading, LCT schedule, per-epoch evaluation, checkpoints, resume, DDP.

``fit`` is model-agnostic: it receives a model factory, datasets and the train
section of a config. Determinism: the model is built after ``torch.manual_seed(seed)``
and the torch RNG is re-seeded from (seed, epoch) at the start of every epoch, and
the sampler shuffles by (seed, epoch); a resumed run therefore continues exactly as
the uninterrupted run would have.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..accounting import count_parameters
from ..convert import lct, lct_ranks
from ..nn.lowrank import frobenius_penalty, low_rank_layers
from ..optim import balance_shared_gradients
from . import distributed, lct_schedule
from .checkpoint import load_model_state, optimizer_from_flat, read_checkpoint, save_checkpoint
from .logger import RunLogger
from .optim import build_optimizer, lr_at
from .tasks import ClassificationTask
from .train import train_one_epoch


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


def config_warnings(tcfg) -> list[str]:
    """Settings that are legal but almost certainly not what was meant."""
    out = []
    if tcfg.warmup_epochs >= tcfg.epochs:
        out.append(f"train.warmup_epochs={tcfg.warmup_epochs} >= train.epochs={tcfg.epochs}: the learning rate "
                   "never reaches train.lr and the cosine decay never starts")
    if (tcfg.lct_epsilon is not None or tcfg.lct_rank is not None) and tcfg.lct_warmup_epochs >= tcfg.epochs:
        out.append(f"train.lct_warmup_epochs={tcfg.lct_warmup_epochs} >= train.epochs={tcfg.epochs}: the model is "
                   "never factorised, so this LCT run trains a dense model")
    return out


def show_progress(enabled: bool) -> bool:
    """Progress bars only when asked for and both stdout and stderr are terminals (no bar redraws in logs)."""
    return enabled and sys.stdout.isatty() and sys.stderr.isatty()


def fit(config, build_model: Callable[[], nn.Module], train_set, test_set, run_dir: str | Path, task=None,
        resume: bool = False, lct_targets: str = r".*", log: Callable[[str], None] = print) -> list[dict]:
    """Train ``build_model()`` per ``config.train``; returns the per-epoch history.

    ``task`` supplies the loss, the evaluation and the collate function (see
    :mod:`lors.engine.tasks`); default: classification with ``config.model.num_classes``.

    Writes ``run_dir/last.json`` + tensors after every epoch and ``run_dir/log.csv``.
    With ``resume=True`` continues from ``run_dir/last.json``.
    """
    tcfg = config.train
    device = pick_device(tcfg.device)
    rank, world = distributed.init_distributed(device)
    main = rank == 0
    run_dir = Path(run_dir)
    lct_scheduled = tcfg.lct_epsilon is not None or tcfg.lct_rank is not None
    if tcfg.lct_epsilon is not None and tcfg.lct_rank is not None:
        raise ValueError("set only one of train.lct_epsilon and train.lct_rank")

    if main:
        for warning in config_warnings(tcfg):
            log(f"warning: {warning}")
    torch.manual_seed(tcfg.seed)
    model = build_model()
    start_epoch, step, history, lct_done, meta, lct_final = 0, 0, [], False, None, {}
    if resume:
        meta, tensors = read_checkpoint(run_dir / "last.json")
        restore_model(model, meta, tensors)
        lct_done = meta.get("lct_done", False)
        lct_final = meta.get("lct_final_ranks", {})
        torch.set_rng_state(tensors["rng.torch"])
        start_epoch, step, history = meta["epoch"] + 1, meta["step"], meta["history"]
        if start_epoch >= tcfg.epochs:
            if main:
                log(f"run {run_dir} already finished ({meta['epoch'] + 1} of {tcfg.epochs} epochs); nothing to "
                    "resume. Raise train.epochs to train longer, or use a new output directory")
            return history
        if main:
            log(f"resuming from {run_dir / 'last.json'} at epoch {start_epoch + 1}")
    model.to(device)
    if tcfg.shared_grad_balance and balance_shared_gradients(model) == 0 and main:
        log("warning: train.shared_grad_balance is true but the model has no LORS stacks; it has no effect")

    def make_optimizer():
        # With Frobenius decay the LCT factors get (lambda/2)||UV||^2 instead of AdamW's decay on U and V.
        exempt = frozenset(id(p) for m in low_rank_layers(model) for p in (m.U, m.V)) \
            if tcfg.lct_frobenius_decay > 0 else frozenset()
        return build_optimizer(model, tcfg.lr, tcfg.weight_decay, exempt, tcfg.shared_lr_scale,
                               tcfg.private_lr_scale, tcfg.lct_lr_scale)

    def regularizer():
        return 0.5 * tcfg.lct_frobenius_decay * frobenius_penalty(model)

    def reproject_hook(current_step):
        """Every lct_reproject_every steps: re-balance (and optionally re-truncate) the LCT factors."""
        nonlocal optimizer, wrapped
        layers = low_rank_layers(model)
        if not layers or current_step % tcfg.lct_reproject_every:
            return None
        before = [m.rank for m in layers]
        after = [m.reproject(tcfg.lct_reproject_epsilon) for m in layers]
        if before == after:  # same shapes: drop the factors' Adam moments, they refer to the old basis
            for m in layers:
                optimizer.state.pop(m.U, None)
                optimizer.state.pop(m.V, None)
            return None
        optimizer = make_optimizer()  # new parameter tensors
        wrapped = DistributedDataParallel(model) if world > 1 else model
        return wrapped, optimizer

    optimizer = make_optimizer()
    if meta is not None and "optimizer_groups" in meta:
        optimizer.load_state_dict(optimizer_from_flat(tensors, meta["optimizer_groups"]))
    wrapped = DistributedDataParallel(model) if world > 1 else model

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=tcfg.seed)
    if task is None:
        task = ClassificationTask(config.model.num_classes, tcfg.label_smoothing, tcfg.mixup, tcfg.cutmix)
    loader = DataLoader(train_set, batch_size=config.data.batch_size, sampler=sampler, drop_last=False,
                        num_workers=config.data.num_workers, collate_fn=task.collate_fn)
    test_loader = DataLoader(test_set, batch_size=config.data.eval_batch_size, shuffle=False,
                             collate_fn=task.collate_fn)
    steps_per_epoch = len(loader)
    total_steps = tcfg.epochs * steps_per_epoch
    warmup_steps = tcfg.warmup_epochs * steps_per_epoch
    lr_fn = lambda s: lr_at(s, total_steps, warmup_steps, tcfg.lr, tcfg.min_lr)
    compute_loss = lambda m, batch: task.loss(m, batch, device)
    logger = RunLogger(run_dir, enabled=main)
    if main:
        log(f"run {run_dir}: {count_parameters(model):,} parameters, {len(train_set)} train / "
            f"{len(test_set)} test samples, {tcfg.epochs} epochs, device {device}, world size {world}")

    for epoch in range(start_epoch, tcfg.epochs):
        ramp = epoch - tcfg.lct_warmup_epochs  # epochs into the LCT phase
        if lct_scheduled and not lct_done and ramp >= 0:
            targets = tcfg.lct_targets or lct_targets
            if ramp < tcfg.lct_ramp_epochs:  # gradual: project the dense weights, keep the optimizer
                if not lct_final:  # the final ranks are chosen once, when the LCT phase starts
                    lct_final = lct_schedule.final_ranks(model, tcfg.lct_epsilon, tcfg.lct_rank, targets)
                ranks = lct_schedule.project(model, lct_final, ramp + 1, tcfg.lct_ramp_epochs)
                what = f"projected (ramp epoch {ramp + 1}/{tcfg.lct_ramp_epochs})"
            else:
                ranks = lct_schedule.factorise(model, lct_final, tcfg.lct_epsilon, tcfg.lct_rank, targets)
                lct_final, lct_done, what = ranks, True, "factorised"
                optimizer = make_optimizer()  # new parameters: fresh optimizer state
                wrapped = DistributedDataParallel(model) if world > 1 else model
            if main:
                log(f"LCT: {what} {len(ranks)} layers at epoch {epoch + 1}, ranks {sorted(set(ranks.values()))}, "
                    f"now {count_parameters(model):,} parameters")
        torch.manual_seed(tcfg.seed * 100_003 + epoch)
        sampler.set_epoch(epoch)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{tcfg.epochs}", leave=False,
                   disable=not show_progress(tcfg.progress and main))
        stats, step = train_one_epoch(
            wrapped, loader, optimizer, compute_loss, lr_fn, step, device, tcfg.clip_grad, bar,
            regularizer=regularizer if tcfg.lct_frobenius_decay > 0 else None,
            step_hook=reproject_hook if tcfg.lct_reproject_every > 0 else None)
        bar.close()
        metrics = task.evaluate(model, test_loader, device)
        row = {"epoch": epoch + 1, "train_loss": round(stats["loss"], 6), **{k: round(v, 4) for k, v in metrics.items()},
               "lr": float(f"{stats['lr']:.6g}"), "epoch_time": round(stats["epoch_time"], 3),
               "samples_per_s": round(stats["samples_per_s"], 1), "params": count_parameters(model)}
        history.append(row)
        if main:
            logger.log(row)
            log(" ".join(f"{k}={v}" for k, v in row.items()))
            save_checkpoint(run_dir, model, {"config": dataclasses.asdict(config), "epoch": epoch, "step": step,
                                             "history": history, "lct_ranks": lct_ranks(model), "lct_done": lct_done,
                                             "lct_final_ranks": lct_final,
                                             "world_size": world},
                            optimizer)
        distributed.barrier()
    logger.close()
    return history


def restore_model(model: nn.Module, meta: dict, tensors: dict) -> None:
    """Re-create the checkpoint's LCT factors (if any) in ``model`` and load its weights."""
    if meta.get("lct_ranks"):
        lct(model, rank=meta["lct_ranks"], targets="|".join(map(re.escape, meta["lct_ranks"])))
    load_model_state(model, tensors)


def config_differences(saved: dict, config, section: str = "model") -> list[str]:
    """``section.key: saved -> given`` for the keys whose values differ between a checkpoint's config and ``config``."""
    given = dataclasses.asdict(config).get(section, {})
    old = (saved or {}).get(section, {})
    return [f"{section}.{k}={old[k]!r} (config: {given[k]!r})" for k in old if k in given and old[k] != given[k]]


def load_for_eval(checkpoint: str | Path, build_model: Callable[[], nn.Module], config=None) -> tuple[nn.Module, dict]:
    """Rebuild a trained model from a checkpoint (including LCT-factorised layers).

    With ``config``, a checkpoint that does not fit the model names the model settings it was
    trained with that differ from ``config``.
    """
    meta, tensors = read_checkpoint(checkpoint)
    model = build_model()
    try:
        restore_model(model, meta, tensors)
    except ValueError as e:
        diffs = config_differences(meta.get("config"), config) if config is not None else []
        if not diffs:
            raise
        raise ValueError(f"checkpoint {checkpoint} was trained with {', '.join(diffs[:4])}; evaluate it with the "
                         f"config it was trained with ({e})") from None
    return model, meta
