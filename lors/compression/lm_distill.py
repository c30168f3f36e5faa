"""End-to-end distillation of a compressed causal LM toward its base: the batches (windows of the calibration
sources, :func:`distill_batches`), the teacher's top-k log-probs cached once per teacher and data
(:func:`cached_teacher`), and the loop that trains on them (:func:`distill_lm`, what ``lors compress
--distill-steps`` and ``lors distill`` run)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import torch

from ..data.text import token_windows, window_capacity
from .config import CompressConfig
from .pipeline import as_batches


def distill_lm(student, teacher, tokenizer, texts, cfg: CompressConfig, out, progress, resume, log,
               base_sha: Optional[str] = None) -> list:
    """Distil ``student`` toward ``teacher`` for ``cfg.distill_steps`` steps on :func:`distill_batches` of ``texts``
    (with the teacher's cached top-k when ``cfg.distill_topk``), the embeddings frozen; returns the loop's history,
    one row per 50 steps, with ``tokens_per_s`` added."""
    from ..tasks.distill import distill

    train, key = distill_batches(tokenizer, texts, cfg, base_sha)
    if cfg.distill_topk:
        train = cached_teacher(teacher, train, key, log, cfg.distill_precision)
    train = seeded_order(train, cfg.seed)
    student.get_input_embeddings().weight.requires_grad_(False)  # tied to the head; too few tokens to move it
    order = f", in seed-{cfg.seed} order" if cfg.seed else ""
    repeats = f"; each seen {cfg.distill_steps / len(train):.1f} times" if cfg.distill_steps > len(train) else ""
    log(f"distillation: {cfg.distill_steps} steps x {cfg.batch_size} x {cfg.window} tokens ({cfg.distill_loss}, "
        f"T={cfg.temperature}, lr {cfg.lr}, {cfg.distill_precision}) on {len(train)} batches of the calibration "
        f"sources{' and the stdlib package docstrings' if cfg.distill_data == 'extended' else ''}{order}{repeats}")
    history = distill(student, teacher, train, cfg.distill_steps, lr=cfg.lr, loss=cfg.distill_loss,
                      temperature=cfg.temperature, checkpoint_every=50, progress=progress, seed=cfg.seed,
                      resume=resume, run_dir=Path(out) / "distill" if out else None,
                      precision=cfg.distill_precision, log=log)
    previous = 0
    for h in history:  # from the epoch's steps and time (samples_per_s is rounded to 0.1)
        h["tokens_per_s"] = round((h["step"] - previous) * cfg.batch_size * cfg.window / max(h["epoch_time"], 1e-9), 1)
        previous = h["step"]
    seconds = sum(h["epoch_time"] for h in history)
    log(f"distillation: {cfg.distill_steps * cfg.batch_size * cfg.window / max(seconds, 1e-9):.0f} tokens/s on "
        f"average, {seconds / 60:.1f} min")
    return history


def seeded_order(batches: list, seed: int) -> list:
    """``batches`` as made for seed 0 (so every recorded run reproduces), else in a permutation drawn from ``seed``:
    the same data in another order, the only thing a causal LM's distillation draws at random. Applied after the
    teacher cache, which is made and kept in the batches' own order."""
    if seed == 0:
        return list(batches)
    return [batches[i] for i in torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed)).tolist()]


def distill_batches(tokenizer, texts, cfg: CompressConfig, base_sha: Optional[str] = None) -> tuple[list, dict]:
    """(the distillation batches of a causal LM, the key of their teacher cache): one batch a step, of windows
    spread over every slot of the calibration sources (the calibration windows may be among them), in equal shares
    as far as each source holds them, a source that runs out leaving the rest to the others (``spill``, interleaved
    in proportion), up to every slot of every source (:func:`window_capacity`; SmolLM2 and the mixed sources: 4,086
    windows, 1,022 batches), so only a longer run sees a window twice."""
    count = min(cfg.distill_steps * cfg.batch_size,
                window_capacity(tokenizer, texts, cfg.window, skip=None, spill=True))
    windows = token_windows(tokenizer, texts, count, cfg.window, skip=None, spill=True)
    batches = [{"input_ids": b["input_ids"]} for b in as_batches(windows, cfg.batch_size)]  # the loss calls the model
    key = dict(base=base_sha, calibration=cfg.calibration, window=cfg.window, windows=len(windows),
               batch_size=cfg.batch_size, k=cfg.distill_topk, temperature=cfg.temperature)
    return batches, key


def cached_teacher(teacher, batches: list[dict], key: dict, log, precision: str = "fp32") -> list[dict]:
    """``batches`` with the teacher's top-k log-probs (:func:`lors.tasks.distill.cache_topk`, run in ``precision``),
    computed once per ``key`` (base weights, windows, k, temperature; and the precision unless fp32) and kept as
    safetensors in the cache folder, so every student of the same teacher and data reuses them. The key also holds a
    digest of the batches' token ids: a change of the text sources can never reuse a stale cache."""
    from safetensors.torch import load_file, save_file

    from ..tasks.distill import TOPK_KEYS, cache_topk
    from .pretrained import cache_dir

    tokens = torch.cat([b["input_ids"] for b in batches]).numpy().tobytes()
    key = {**key, "text": hashlib.sha256(tokens).hexdigest()[:16]}
    if precision != "fp32":  # fp32 caches keep the names they had before the precision was part of the key
        key["precision"] = precision
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "teacher-topk" / f"{name}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        if len(tensors) == 2 * len(batches) and all(tensors[f"{TOPK_KEYS[1]}.{i}"].shape[:2] == b["input_ids"].shape
                                                    for i, b in enumerate(batches)):
            log(f"teacher top-{key['k']}: cached ({path})")
            return [{**b, **{k: tensors[f"{k}.{i}"] for k in TOPK_KEYS}} for i, b in enumerate(batches)]
    start = time.time()
    cached = cache_topk(teacher, batches, key["k"], key["temperature"], log=log, precision=precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{k}.{i}": b[k].contiguous() for i, b in enumerate(cached) for k in TOPK_KEYS}, str(path),
              metadata={"key": json.dumps(key, sort_keys=True)})
    log(f"teacher top-{key['k']}: {len(batches)} batches in {time.time() - start:.0f} s, cached in {path}")
    return cached
