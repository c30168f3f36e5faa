"""The whole ``lors compress`` job as one library call: load a base model, compress it, score it, save it.

:func:`run` takes a model name (``"smollm2"``, ``"minilm"`` or a Hugging Face folder) and a
:class:`~lors.compression.CompressConfig`, and

* causal LMs: calibrates on windows of the :mod:`lors.data.text.calibration` sources, chooses the shrinkage on
  other windows of the same sources, and reports held-out perplexity (``pydoc``, the Bible's held-out books, or text
  files) and a greedy sample of every stage;
* sentence encoders: calibrates on training sentences and reports the agreement of held-out sentence embeddings
  (mean / min cosine, top-1 agreement, recall@10);

optionally distils the compressed model toward the original, and with ``out`` writes a self-contained folder
(:func:`lors.compression.save_pretrained`) plus ``results.json``. Evaluation text is never calibration text.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..accounting import count_parameters
from ..apply.budget import stack_linears
from ..data.text import SPLIT_SEED, calibration_text, distillation_text, eval_text, token_windows
from . import config as defaults
from .config import CompressConfig, FieldError
from .evaluate import (COLLAPSE, EVAL_PROMPTS, EVAL_WINDOWS, embed, embedding_agreement, greedy_samples,
                       next_token_agreement, perplexity, repetition, sample_prompts, token_batches)
from .export import save_pretrained
from .lm_distill import distill_lm
from .pipeline import linear_params, as_batches, compress
from .pretrained import base_source, cache_dir, cached_json, digest, is_causal_lm, load_causal_lm, load_encoder

EVAL_TEXTS = ("pydoc", "bible")
SAMPLE_TOKENS = 48  # new tokens of every greedy sample


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def run(model: str = "smollm2", config: Optional[CompressConfig] = None, gguf_file: Optional[str] = None,
        eval_texts: Optional[Sequence[str]] = None, eval_windows: Optional[int | str] = None,
        eval_prompts: Optional[int] = None, eval_sentences: Optional[int] = None, out: Optional[str | Path] = None,
        dtype: Optional[str] = None, progress: bool = True, resume: bool = False,
        log: Callable[[str], None] = print) -> dict:
    """Compress ``model`` as ``config`` says; returns ``{"rows", "history", "samples", "report", "model",
    "peak_memory_gb"}`` (the process's peak resident memory up to the end of the run).

    LMs: ``eval_texts`` (default pydoc and bible) scored on ``eval_windows`` windows each, spread evenly (default
    ``EVAL_WINDOWS``; ``"all"``: every window of the whole text); greedy samples of the four fixed prompts and
    ``eval_prompts`` sentence openings of each evaluation text (:func:`~lors.compression.evaluate.sample_prompts`;
    default ``EVAL_PROMPTS``);
    encoders: ``eval_sentences`` held-out sentences (default 1000). ``dtype``: storage of the saved folder.
    """
    config = config or CompressConfig(budget=0.8)
    lm = is_causal_lm(model, gguf_file)
    _check_eval_arguments(lm, model, gguf_file, eval_texts, eval_windows, eval_prompts, eval_sentences)
    cfg = config.resolve("lm" if lm else "encoder")  # refuses a bad recipe before the model loads
    torch.manual_seed(cfg.seed)
    if lm:
        result = _run_lm(model, gguf_file, config, tuple(eval_texts or EVAL_TEXTS), eval_windows or EVAL_WINDOWS,
                         EVAL_PROMPTS if eval_prompts is None else eval_prompts, out, progress, resume, log)
    else:
        result = _run_encoder(model, cfg, eval_sentences or 1000, out, progress, resume, log)
    return _finish(result, result.pop("config", cfg), base_source(model, gguf_file), out, dtype, lm, log)


def run_distill(folder: str | Path, steps: int, lr: Optional[float] = None, topk: Optional[int] = None,
                loss: Optional[str] = None, temperature: Optional[float] = None, seed: Optional[int] = None,
                precision: Optional[str] = None, data: Optional[str] = None, base: Optional[str] = None,
                eval_texts: Optional[Sequence[str]] = None,
                eval_windows: Optional[int | str] = None, eval_prompts: Optional[int] = None,
                eval_sentences: Optional[int] = None, out: Optional[str | Path] = None, dtype: Optional[str] = None,
                progress: bool = True, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Distil a compressed folder (written by :func:`run` / ``lors compress --out``) ``steps`` more steps toward the
    base model it was compressed from, scored before and after exactly as :func:`run` scores (same windows,
    prompts, sentences); with ``out``, writes the distilled model as a new folder. Compress once, distil as long as
    the budget allows.

    The recipe is the folder's recorded ``compress_config`` with the distillation fields replaced: ``lr``,
    ``topk`` (cached teacher top-k, LMs), ``loss`` and ``temperature`` (LMs), ``precision`` (``fp32`` /
    ``bf16-mixed``) and ``data`` (encoders: ``"train"`` / ``"extended"``) take their defaults unless given;
    ``seed`` is the recorded one unless given. ``base``: the base model (default: the one the folder records; a
    base whose weights differ from the recorded sha256 is refused). Returns ``{"rows", "history", "samples",
    "model", "peak_memory_gb", "start"}``; rows are the original, the folder as loaded, and the distilled model.
    """
    from .export import from_pretrained, read_meta

    meta = read_meta(folder)
    recorded, source = meta.get("compress_config"), dict(meta.get("source") or {})
    if not recorded:
        raise ValueError(f"{folder}/lors.json records no compress_config: distil folders written by lors compress")
    name = base or source.get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{folder} does not record its base model: give base (--base), the model it was "
                         "compressed from")
    gguf_file = source.get("gguf_file") if name == source.get("base_model_name_or_path") else None
    lm = meta["architecture"].endswith("ForCausalLM")
    if lm != is_causal_lm(name, gguf_file):
        raise ValueError(f"base {name} is {'not ' if lm else ''}a causal LM but {folder} holds a "
                         f"{meta['architecture']}")
    _check_eval_arguments(lm, name, None, eval_texts, eval_windows, eval_prompts, eval_sentences)
    if not isinstance(steps, int) or steps < 1:
        raise FieldError("distill_steps", f"must be a positive integer, got {steps!r}")
    fields = {**recorded, "lr": lr, "distill_topk": topk, "distill_loss": loss, "temperature": temperature,
              "distill_precision": precision, "distill_data": data, "distill_steps": steps,
              "seed": recorded.get("seed", 0) if seed is None else seed}
    cfg = CompressConfig.from_dict(fields).resolve("lm" if lm else "encoder")
    now = base_source(name, gguf_file)
    if source.get("sha256") and now["sha256"] != source["sha256"]:
        raise ValueError(f"base {name} (sha256 {now['sha256'][:12]}) is not the model {folder} was compressed from "
                         f"(sha256 {source['sha256'][:12]})")
    torch.manual_seed(cfg.seed)
    student = from_pretrained(folder)
    start = f"{Path(folder).name} (as saved)"
    if lm:
        teacher, tokenizer = load_causal_lm(name, gguf_file, log=log, progress=progress)
        ev = _LMEvaluation(teacher, tokenizer, cfg, now["sha256"], tuple(eval_texts or EVAL_TEXTS),
                           eval_windows or EVAL_WINDOWS, EVAL_PROMPTS if eval_prompts is None else eval_prompts, log)
        rows = [ev.row("original", teacher), ev.row(start, student)]
        ev.sample(start, student)
        history = distill_lm(student, teacher, tokenizer, distillation_text(cfg.calibration, cfg.distill_data), cfg,
                              out, progress, resume, log, now["sha256"] if cfg.distill_topk else None)
        rows.append(ev.row(f"+ distillation ({steps} steps)", student, sum(h["epoch_time"] for h in history)))
        ev.sample(rows[-1]["model"], student)
        result = {**ev.finish(rows), "history": history, "model": student, "tokenizer": tokenizer}
    else:
        teacher, tokenizer = load_encoder(name, progress=progress)
        ev = _EncoderEvaluation(teacher, tokenizer, cfg, eval_sentences or 1000)
        rows = [ev.row("original", teacher), ev.row(start, student)]
        history = _distill_encoder(student, teacher, ev, cfg, out, progress, resume, log)
        rows.append(ev.row(f"+ distillation ({steps} steps)", student))
        log(format_encoder_rows(rows))
        result = {"rows": rows, "history": history, "samples": {}, "model": student, "tokenizer": tokenizer}
    result["start"] = str(folder)
    step = {"from": str(Path(folder).resolve()), "steps": steps, "lr": cfg.lr, "topk": cfg.distill_topk,
            "loss": cfg.distill_loss, "temperature": cfg.temperature, "precision": cfg.distill_precision,
            "data": cfg.distill_data, "seed": cfg.seed}
    source = {**now, "distillations": [*source.get("distillations", []), step]}
    return _finish(result, cfg, source, out, dtype, lm, log)


def _check_eval_arguments(lm, model, gguf_file, eval_texts, eval_windows, eval_prompts, eval_sentences) -> None:
    if eval_prompts is not None and eval_prompts < 0:  # checked before the model loads
        raise ValueError(f"eval_prompts must be >= 0, got {eval_prompts}")
    if lm and eval_sentences is not None:
        raise ValueError("eval_sentences is for sentence encoders; causal LMs take eval_texts / eval_windows")
    if not lm and any(v is not None for v in (eval_texts, eval_windows, eval_prompts, gguf_file)):
        raise ValueError("eval_texts, eval_windows, eval_prompts and gguf_file are for causal LMs; "
                         f"{model} is an encoder (eval_sentences)")


def _finish(result: dict, cfg: CompressConfig, source: dict, out, dtype, lm: bool, log) -> dict:
    """Add the peak memory; with ``out``, save the model folder and ``results.json``."""
    result["peak_memory_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)  # Linux: KiB
    if out:
        save_pretrained(result["model"], out, result.pop("tokenizer"), cfg, source, dtype)
        (Path(out) / "results.json").write_text(json.dumps({k: v for k, v in result.items() if k != "model"},
                                                           indent=2))
        hint = f"; lors generate --model {out}" if lm else ""
        log(f"saved to {out}: a self-contained model (lors.from_pretrained('{out}'){hint}) and results.json")
    result.pop("tokenizer", None)
    return result


class _LMEvaluation:
    """What every causal-LM job scores on: the held-out windows of each evaluation text, the greedy-sample prompts,
    and the original's scores (cached per base model); :meth:`row` scores a model, :meth:`sample` keeps its greedy
    samples, :meth:`finish` adds the repetition check to every row."""

    def __init__(self, teacher, tokenizer, cfg: CompressConfig, base_sha: str, eval_texts, eval_windows,
                 eval_prompts, log):
        self.teacher, self.tokenizer, self.cfg, self.base_sha, self.log = teacher, tokenizer, cfg, base_sha, log
        held_texts = {Path(t).stem if os.sep in t else t: eval_text(t) for t in eval_texts}
        self.evals = {k: token_windows(tokenizer, t, eval_windows, cfg.window) for k, t in held_texts.items()}
        self.prompts = sample_prompts(held_texts.values(), eval_prompts)
        self.container, self.targets, _ = stack_linears(teacher)
        self.base = linear_params(teacher, self.container, self.targets)
        self.info = {"texts": list(eval_texts), "windows": eval_windows, "window": cfg.window,
                     "split_seed": SPLIT_SEED, "prompts": list(self.prompts)}
        key = {"samples": digest(json.dumps(self.prompts).encode()), "tokens": SAMPLE_TOKENS}
        self.samples = {"original": self._original(key, lambda: greedy_samples(teacher, tokenizer, self.prompts,
                                                                                SAMPLE_TOKENS))}

    def _original(self, key: dict, compute):  # the base model's scores are the same on every run: computed once
        versions = {"torch": torch.__version__, "transformers": _transformers_version()}
        return cached_json(cache_dir() / "original" / f"{self.base_sha[:16]}.json", {**key, **versions}, compute)

    def describe(self) -> str:
        return ", ".join(f"{k} ({len(v)} x {self.cfg.window})" for k, v in self.evals.items())

    def row(self, label: str, model, seconds: Optional[float] = None) -> dict:
        """Perplexity on every text; next-token agreement (top-1, KL) with the original for any other model."""
        teacher, batch = self.teacher, self.cfg.batch_size
        r = {"model": label, "linear_params": linear_params(model, self.container, self.targets, teacher)}
        r["fraction"] = r["linear_params"] / self.base
        for k, w in self.evals.items():
            score = lambda: round(perplexity(model, w, batch)["ppl"], 3)  # noqa: E731
            r[f"ppl_{k}"] = self._original({"ppl": digest(w.numpy().tobytes())}, score) if model is teacher \
                else score()
        if model is not teacher:  # next-token agreement with the original: what samples feel first
            for k, w in self.evals.items():
                agreement = next_token_agreement(model, teacher, w, batch)
                r[f"top1_{k}"], r[f"kl_{k}"] = round(agreement["top1"], 2), round(agreement["kl"], 4)
        if seconds is not None:
            r["seconds"] = round(seconds, 1)
        self.log("  " + ", ".join(f"{k}={v}" for k, v in r.items()))
        return r

    def sample(self, label: str, model) -> None:
        self.samples[label] = greedy_samples(model, self.tokenizer, self.prompts, SAMPLE_TOKENS)

    def finish(self, rows: list[dict]) -> dict:
        for r in rows:  # distinct bigrams of the greedy samples, against the original's (well below 1: they loop)
            r.update(repetition(self.samples[r["model"]], self.samples["original"], self.tokenizer, self.prompts))
            if r["collapsed"]:
                self.log(f"  [{r['model']}] {r['collapsed_samples']} of {len(self.samples['original'])} greedy "
                         f"samples collapsed (distinct-2 under {COLLAPSE} of the original's); mean ratio "
                         f"{r['distinct2_vs_original']:.2f}")
        for k, v in self.samples.items():
            for text in v:
                self.log(f"sample [{k}]: {text!r}")
        return {"rows": rows, "samples": self.samples, "evaluation": self.info}


def _run_lm(name, gguf_file, config: CompressConfig, eval_texts, eval_windows, eval_prompts, out, progress, resume,
            log) -> dict:
    teacher, tokenizer = load_causal_lm(name, gguf_file, log=log, progress=progress)
    cfg = config.resolve("lm", teacher)  # the default method depends on the model's MLP layout
    texts = calibration_text(cfg.calibration)
    calib = token_windows(tokenizer, texts, cfg.calibration_windows, cfg.window)
    held = token_windows(tokenizer, texts, min(16, cfg.calibration_windows), cfg.window, skip=1)
    base_sha = base_source(name, gguf_file)["sha256"]
    ev = _LMEvaluation(teacher, tokenizer, cfg, base_sha, eval_texts, eval_windows, eval_prompts, log)
    log(f"{name}: {len(teacher.get_submodule(ev.container))} blocks, {ev.base:,} parameters in their linears; "
        f"calibration: {cfg.calibration} ({cfg.calibration_windows} x {cfg.window} tokens); evaluation: "
        f"{ev.describe()}; {len(ev.prompts)} greedy-sample prompts; recipe: {cfg.setting()}")
    rows = [ev.row("original", teacher)]
    student, report = compress(teacher, calib, cfg, validation=held, log=log)
    rows.append(ev.row(cfg.setting(), student, report.seconds))
    rows[-1]["shrinkage"] = report.shrinkage
    ev.sample(cfg.setting(), student)
    history = []
    if cfg.distill_steps > 0:
        history = distill_lm(student, teacher, tokenizer, distillation_text(cfg.calibration, cfg.distill_data), cfg,
                              out, progress, resume, log, base_sha if cfg.distill_topk else None)
        rows.append(ev.row(f"+ distillation ({cfg.distill_steps} steps)", student,
                           sum(h["epoch_time"] for h in history)))
        ev.sample(rows[-1]["model"], student)
    return {**ev.finish(rows), "history": history, "report": report.to_dict(), "model": student,
            "tokenizer": tokenizer, "config": cfg}


def held_out_sentences(seed: int = 0, n_eval: int = 1000) -> tuple[list[str], list[str]]:
    """(training sentences shuffled by ``seed``, ``n_eval`` held-out sentences) of
    :func:`lors.data.text.english_sentences`; the held-out ones are chosen by the split seed, so they stay fixed
    when ``seed`` changes."""
    from ..data.text import english_sentences

    train, held = english_sentences(SPLIT_SEED)
    train = [train[i] for i in torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()]
    pick = torch.randperm(len(held), generator=torch.Generator().manual_seed(SPLIT_SEED))[:n_eval]
    return train, [held[i] for i in pick.tolist()]


class _EncoderEvaluation:
    """The sentences of an encoder job (training sentences shuffled by the seed; held-out ones fixed by the split
    seed) and the original's held-out embeddings; :meth:`row` scores a model's agreement with them."""

    def __init__(self, teacher, tokenizer, cfg: CompressConfig, eval_sentences: int):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.train, self.held = held_out_sentences(cfg.seed, eval_sentences)
        self.eval_batches = token_batches(tokenizer, self.held, 64)
        self.reference = embed(teacher, self.eval_batches)
        self.base = count_parameters(teacher.encoder)

    def agreement(self, model) -> dict:
        return embedding_agreement(self.reference, embed(model, self.eval_batches))

    def row(self, label: str, model) -> dict:
        count = count_parameters(model.encoder)
        return {"model": label, "encoder_params": count, "fraction": count / self.base, **self.agreement(model)}


def _run_encoder(name, cfg: CompressConfig, eval_sentences, out, progress, resume, log) -> dict:
    teacher, tokenizer = load_encoder(name, progress=progress)
    ev = _EncoderEvaluation(teacher, tokenizer, cfg, eval_sentences)
    n, most = cfg.calibration_sentences, len(ev.train) - 128  # 128 more are held out to choose the shrinkage on
    if n is None:  # the default: CALIBRATION_SENTENCES, or all the split holds (it depends on the installed sources)
        n = min(defaults.CALIBRATION_SENTENCES, most)
        cfg = dataclasses.replace(cfg, calibration_sentences=n)
    elif n > most:
        raise ValueError(f"calibration_sentences must be at most {most} (the {len(ev.train):,} training sentences "
                         f"less 128 held out to choose the shrinkage), got {n}")
    calibration = token_batches(tokenizer, ev.train[:n], cfg.batch_size)
    validation = token_batches(tokenizer, ev.train[n:n + 128], cfg.batch_size)  # held-out calibration sentences
    log(f"{name}: encoder {ev.base:,} parameters; {len(ev.train):,} training / {len(ev.held):,} held-out sentences "
        f"(split by source); calibration on {n}; recipe: {cfg.setting()}")
    rows = [ev.row("original", teacher)]
    student, report = compress(teacher, calibration, cfg, validation=validation, log=log)
    rows.append(ev.row(cfg.setting(), student))
    history = []
    if cfg.distill_steps > 0:
        history = _distill_encoder(student, teacher, ev, cfg, out, progress, resume, log)
        rows.append(ev.row(f"+ distillation ({cfg.distill_steps} steps)", student))
    log(format_encoder_rows(rows))
    return {"rows": rows, "history": history, "samples": {}, "report": report.to_dict(), "model": student,
            "tokenizer": tokenizer, "config": cfg}


def distill_sentences(train: list[str], cfg: CompressConfig) -> list[str]:
    """The sentences an encoder is distilled on: ``train`` as given (``cfg.distill_data == "train"``), or with
    ``"extended"`` ``train`` and :func:`lors.data.text.extra_sentences`, each with two random crops
    (:func:`lors.data.text.sentence_crops`), shuffled by ``cfg.seed``."""
    from ..data.text import extra_sentences, sentence_crops

    if cfg.distill_data == "train":
        return list(train)
    pool = list(train) + extra_sentences(SPLIT_SEED)
    pool += sentence_crops(pool, 2, cfg.seed)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    return [pool[i] for i in order]


def _distill_encoder(student, teacher, ev: _EncoderEvaluation, cfg: CompressConfig, out, progress, resume,
                     log) -> list:
    from ..tasks.distill import distill

    evaluate = lambda m: {k: round(v, 5) for k, v in ev.agreement(m).items()}  # noqa: E731
    sentences = distill_sentences(ev.train, cfg)
    seen = cfg.distill_steps * cfg.batch_size
    used = sentences[:seen]  # step s takes batch s % len: the rest would go unused
    log(f"distillation data ({cfg.distill_data}): {len(sentences):,} sentences, {len(used):,} of them in "
        f"{cfg.distill_steps} steps of {cfg.batch_size}" + (f", each {seen / len(used):.1f} times"
                                                            if seen > len(used) else ""))
    return distill(student, teacher, token_batches(ev.tokenizer, used, cfg.batch_size), cfg.distill_steps,
                   lr=cfg.lr, checkpoint_every=100, evaluate=evaluate, progress=progress, seed=cfg.seed,
                   resume=resume, run_dir=Path(out) / "distill" if out else None, precision=cfg.distill_precision,
                   log=log)


def format_encoder_rows(rows: list[dict]) -> str:
    lines = [f"{'model':<40}{'encoder params':>15}{'of original':>13}{'cos mean':>10}{'cos min':>9}{'top-1 agree':>13}"
             f"{'recall@10':>11}"]
    for r in rows:
        lines.append(f"{r['model']:<40}{r['encoder_params']:>15,}{100 * r['fraction']:>12.1f}%{r['cos_mean']:>10.4f}"
                     f"{r['cos_min']:>9.4f}{r['top1_agree']:>12.1f}%{r['recall@10']:>10.1f}%")
    return "\n".join(lines)
