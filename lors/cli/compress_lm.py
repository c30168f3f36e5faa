"""``lors compress`` for causal LMs (SmolLM2-135M or any Hugging Face ``*ForCausalLM`` folder), scored by perplexity.

:func:`run_lm` loads the model (:func:`lors.cli.pretrained.load_causal_lm`), measures the calibration moments
once, compresses it (:func:`lors.cli.compress.compress`: LCT / LORS / basis sharing, budgeted ranks, optional
sequential refit), optionally distils it with the KL of the next-token distributions, and reports held-out
perplexity of every stage on every evaluation text. Calibration and distillation text come from
:mod:`lors.data.lm_text` sources (disjoint windows), never from the evaluation text.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from ..accounting import count_parameters
from ..apply.budget import stack_linears
from ..apply.calibration import input_moments
from ..data.lm_text import calibration_text, eval_text, token_windows
from ..tasks.lm import perplexity
from .compress import SHRINKAGE_GRID, choose_shrinkage, compress
from .pretrained import load_causal_lm

WINDOW = 256
PROMPT = "The Python standard library"


def lm_batches(windows: torch.Tensor, batch_size: int) -> list[dict]:
    """Model-call dicts of ``batch_size`` windows each (``use_cache=False``: no KV cache in calibration)."""
    return [{"input_ids": windows[i:i + batch_size], "use_cache": False} for i in range(0, len(windows), batch_size)]


@torch.no_grad()
def greedy_sample(model: nn.Module, tokenizer, prompt: str = PROMPT, tokens: int = 30) -> str:
    """The model's greedy continuation of ``prompt`` (``tokens`` new tokens), prompt included."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    for _ in range(tokens):
        ids = torch.cat([ids, model(input_ids=ids, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    return tokenizer.decode(ids[0])


def run_lm(model_name: str = "smollm2", gguf_file: Optional[str] = None, method: str = "lct",
           fraction: Optional[float] = 0.8, rank: Optional[int] = None, epsilon: Optional[float] = None,
           init: str = "calibrated", sequential: bool = True, calibration: str = "mixed",
           calibration_windows: int = 64, eval_texts: Sequence[str] = ("pydoc", "bible"), eval_windows: int = 40,
           allocation: str = "uniform", group_size: Optional[int] = None, shrinkage: float | str = 0.0,
           form: str = "factors",
           distill_steps: int = 0, distill_loss: str = "kl", temperature: float = 1.0, lr: Optional[float] = None,
           batch_size: int = 4, out: Optional[str] = None, seed: int = 0, progress: bool = True,
           checkpoint_every: int = 50, resume: bool = False, log=print) -> dict:
    """Compress a causal LM and (optionally) distil it; returns ``{"rows", "history", "samples", "model"}``.

    Rows: held-out perplexity (``ppl_<text>``) of the original, the compressed and the distilled model, with
    the parameters of the stacked decoder linears. ``shrinkage="auto"`` picks it from :data:`SHRINKAGE_GRID` by
    the perplexity of one-shot fits on held-out calibration windows (:func:`choose_shrinkage`). ``form``:
    ``"factors"`` or ``"pivoted"`` (see :func:`lors.cli.compress.compress`). With ``out``: ``results.json``, the compressed model
    (:func:`lors.save` + tokenizer) and the distillation checkpoints (``out/distill``).
    """
    from ..apply.serialization import save
    from ..tasks.distill import distill

    torch.manual_seed(seed)
    teacher, tokenizer = load_causal_lm(model_name, gguf_file, log=log)
    texts = calibration_text(calibration, seed)
    calib = lm_batches(token_windows(tokenizer, texts, calibration_windows, WINDOW), batch_size)
    evals = {Path(t).stem if os.sep in t else t: token_windows(tokenizer, eval_text(t, seed), eval_windows, WINDOW)
             for t in eval_texts}
    container, targets, paths = stack_linears(teacher)
    base = _linear_params(teacher, container, targets)
    log(f"{model_name}: {len(teacher.get_submodule(container))} blocks, {base:,} parameters in their linears; "
        f"calibration: {calibration} ({calibration_windows} x {WINDOW} tokens); evaluation: "
        f"{', '.join(f'{k} ({len(v)} x {WINDOW})' for k, v in evals.items())}")

    def row(name, model, seconds=None):
        r = {"model": name, "linear_params": _linear_params(model, container, targets, teacher)}
        r["fraction"] = r["linear_params"] / base
        r.update({f"ppl_{k}": round(perplexity(model, w, batch_size)["ppl"], 3) for k, w in evals.items()})
        if seconds is not None:
            r["seconds"] = round(seconds, 1)
        log("  " + ", ".join(f"{k}={v}" for k, v in r.items()))
        return r

    rows, samples = [row("original", teacher)], {"original": greedy_sample(teacher, tokenizer)}
    t0 = time.time()
    moments = input_moments(teacher, paths, calib) if init == "calibrated" else None
    options = dict(method=method, fraction=fraction, rank=rank, epsilon=epsilon, allocation=allocation,
                   group_size=group_size, form=form)
    chosen = None
    if shrinkage == "auto":
        held = token_windows(tokenizer, texts, min(16, calibration_windows), WINDOW, skip=1)
        shrinkage, chosen = choose_shrinkage(teacher, moments, lambda m: perplexity(m, held, batch_size)["ppl"],
                                             log=log, **options)
        log(f"shrinkage {shrinkage:g} chosen on {len(held)} held-out calibration windows")
    student = compress(teacher, init=init, calibration=calib if sequential else None, moments=moments,
                       sequential=sequential, shrinkage=shrinkage, log=log if progress else None, **options)
    del moments  # ~0.7 GB for SmolLM2; not needed by the distillation
    setting = f"{fraction:.0%}" if fraction is not None else f"rank {rank}" if rank else f"epsilon {epsilon}"
    name = f"{method}{' pivoted' if form == 'pivoted' else ''} {init}{' sequential' if sequential else ''} ({setting})"
    rows.append(row(name, student, time.time() - t0))
    rows[-1]["shrinkage"] = shrinkage
    if chosen:
        rows[-1]["shrinkage_scores"] = {str(a): round(v, 3) for a, v in chosen.items()}
    samples[name] = greedy_sample(student, tokenizer)
    history = []
    if distill_steps > 0:
        history = _distill(student, teacher, tokenizer, texts, calibration_windows, distill_steps, distill_loss,
                           temperature, lr or 1e-4, batch_size, out, seed, progress, checkpoint_every, resume, log, distill)
        rows.append(row(f"+ distillation ({distill_steps} steps)", student,
                        sum(h["epoch_time"] for h in history)))
        samples[rows[-1]["model"]] = greedy_sample(student, tokenizer)
    for k, v in samples.items():
        log(f"sample [{k}]: {v!r}")
    if out:
        save(student, out)
        tokenizer.save_pretrained(out)
        (Path(out) / "results.json").write_text(json.dumps({"rows": rows, "samples": samples, "history": history},
                                                           indent=2))
        log(f"saved to {out} (results.json; load with lors.load(<the original model>, '{out}'))")
    return {"rows": rows, "history": history, "samples": samples, "model": student}


def _linear_params(model: nn.Module, container: str, targets, teacher: Optional[nn.Module] = None) -> int:
    """Parameters of the stacked linears: every parameter of ``model`` not in ``teacher``'s other modules."""
    reference = teacher if teacher is not None else model
    modules = dict(reference.named_modules())
    blocks = len(reference.get_submodule(container))
    dense = {id(p) for i in range(blocks) for t in targets for p in modules[f"{container}.{i}.{t}"].parameters()}
    other = sum(p.numel() for p in reference.parameters() if id(p) not in dense)
    return count_parameters(model) - other


def _distill(student, teacher, tokenizer, texts, calibration_windows, steps, loss, temperature, lr, batch_size,
             out, seed, progress, checkpoint_every, resume, log, distill):
    windows = steps * batch_size
    train = lm_batches(token_windows(tokenizer, texts, min(windows, 2_000), WINDOW, skip=1), batch_size)
    train = [{"input_ids": b["input_ids"]} for b in train]  # the loss calls the model itself
    student.get_input_embeddings().weight.requires_grad_(False)  # tied to the head; too few tokens to move it
    log(f"distillation: {steps} steps x {batch_size} x {WINDOW} tokens ({loss}, T={temperature}, lr {lr}) on "
        f"{len(train)} batches of the calibration sources (windows disjoint from calibration)")
    history = distill(student, teacher, train, steps, lr=lr, loss=loss, temperature=temperature,
                      checkpoint_every=checkpoint_every, progress=progress, seed=seed, resume=resume,
                      run_dir=Path(out) / "distill" if out else None, log=log)
    previous = 0
    for h in history:  # from the epoch's steps and time (samples_per_s is rounded to 0.1)
        h["tokens_per_s"] = round((h["step"] - previous) * batch_size * WINDOW / max(h["epoch_time"], 1e-9), 1)
        previous = h["step"]
    seconds = sum(h["epoch_time"] for h in history)
    log(f"distillation: {steps * batch_size * WINDOW / max(seconds, 1e-9):.0f} tokens/s on average, "
        f"{seconds / 60:.1f} min")
    return history
