"""Compress a pretrained Hugging Face model: calibrated LCT / LORS / basis sharing at a parameter budget.

The pieces behind ``lors compress`` (and ``benchmarks/bench_compress.py``, ``benchmarks/bench_llm.py``):

* :func:`compress` converts a copy of any model with a stack of identical blocks (ranks from
  :func:`lors.apply.budget.budget_ranks`; plain or calibrated init, reusable input moments, optional
  sequential refit, see :mod:`lors.apply.sequential`);
* for sentence encoders: :func:`run` (MiniLM or an encoder folder, scored by :func:`embedding_agreement`:
  mean and min cosine, top-1 agreement and recall@10 of the original's nearest neighbours);
* causal LMs are run by :mod:`lors.cli.compress_lm` (perplexity).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..accounting import count_parameters
from ..apply.budget import FORMS, METHODS, budget_ranks, stack_linears
from ..apply.calibration import input_moments
from ..apply.config import LorsConfig
from ..apply.lct import lct, pivot, rebuild
from ..apply.lors import convert
from ..apply.sequential import RIDGE, sequential_refit
from .pretrained import load_encoder

INITS = ("calibrated", "svd")


def token_batches(tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 64) -> list[dict]:
    """Tokenised, padded batches (dicts of tensors) of ``sentences`` in order."""
    return [dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for i in range(0, len(sentences), batch_size)]


@torch.no_grad()
def embed(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings (all-MiniLM-L6-v2's pooling), (N, D)."""
    model.eval()
    out = []
    for b in batches:
        hidden = model(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def embedding_agreement(reference: torch.Tensor, embeddings: torch.Tensor, k: int = 10) -> dict:
    """Mean and min cosine to the reference embeddings; top-1 agreement (%): for each sentence, is its nearest
    neighbour among the others the same as under the reference model; recall@k (%): the share of the
    reference model's ``k`` nearest neighbours that are among the new model's ``k`` nearest (robust to near-ties)."""
    cos = (reference * embeddings).sum(-1)
    sim_ref = (reference @ reference.T).fill_diagonal_(-2)
    sim_new = (embeddings @ embeddings.T).fill_diagonal_(-2)
    top_ref, top_new = sim_ref.topk(k, 1).indices, sim_new.topk(k, 1).indices
    hits = (top_ref[:, :, None] == top_new[:, None, :]).any(-1).float().mean()
    return {"cos_mean": cos.mean().item(), "cos_min": cos.min().item(),
            "top1_agree": 100.0 * (sim_ref.argmax(1) == sim_new.argmax(1)).float().mean().item(),
            f"recall@{k}": 100.0 * hits.item()}


def shrink(moments: dict, alpha: float) -> dict:
    """Moments shrunk toward their diagonals, ``(1 - alpha) C + alpha diag(C)``: directions the calibration
    text never excites keep some weight, so a fit on one kind of text cuts less of what other text needs."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"shrinkage must be in [0, 1], got {alpha}")
    if alpha == 0:
        return moments
    shrunk = {}  # by id: a moment shared by several layers (q, k, v) stays one tensor
    for C in moments.values():
        if id(C) not in shrunk:
            shrunk[id(C)] = (1 - alpha) * C + alpha * torch.diag(C.diagonal())
    return {p: shrunk[id(C)] for p, C in moments.items()}


SHRINKAGE_GRID = (0.0, 0.1, 0.2, 0.4, 0.7)


def choose_shrinkage(model: nn.Module, moments: dict, score, grid=SHRINKAGE_GRID, log=None,
                     **compress_kwargs) -> tuple[float, dict]:
    """The shrinkage (see :func:`shrink`) whose one-shot compressed model scores lowest, and every score.

    ``score(model) -> float`` (lower is better) must use held-out calibration text, never the evaluation
    text; ``compress_kwargs`` go to :func:`compress` (``sequential`` is turned off here: the choice is made on
    one-shot fits, which are cheap, and reused for the sequential refit)."""
    if not grid or any(not 0 <= a <= 1 for a in grid):
        raise ValueError(f"shrinkage grid values must be in [0, 1], got {grid}")
    kwargs = {**compress_kwargs, "sequential": False, "init": "calibrated"}
    scores = {}
    for alpha in grid:
        scores[alpha] = float(score(compress(model, moments=moments, shrinkage=alpha, **kwargs)))
        if log:
            log(f"  shrinkage {alpha:g}: held-out calibration score {scores[alpha]:.3f}")
    return min(scores, key=scores.get), scores


def compress(model: nn.Module, method: str = "lors", fraction: Optional[float] = None, rank: Optional[int] = None,
             epsilon: Optional[float] = None, init: str = "calibrated", calibration: Optional[list] = None,
             scope: Optional[str] = None, moments: Optional[dict] = None, allocation: str = "uniform",
             floor: float = 0.5, group_size: Optional[int] = None, fit_iterations: int = 2,
             sequential: bool = False, correct: bool = True, shrinkage: float = 0.0, ridge: float = RIDGE,
             form: str = "factors", forward=None, log=None) -> nn.Module:
    """A compressed copy of ``model``: LCT factors, LORS (shared + residuals) or basis sharing on its stacked linears.

    Give one of ``fraction`` (parameter budget: of the stacked linears, or of module ``scope``, e.g.
    ``"encoder"``; ranks from :func:`lors.apply.budget.budget_ranks` with ``allocation``/``floor``),
    ``rank`` or ``epsilon`` (not for ``"basis"``). ``init="calibrated"`` fits the factors to the layers'
    outputs on ``calibration`` batches (or on ``moments`` measured before, reused across calls), shrunk toward
    their diagonals by ``shrinkage``; ``"svd"`` to the weights. ``sequential=True`` then refits block by block
    on the compressed network's own inputs (:mod:`lors.apply.sequential`; needs ``calibration`` batches),
    ``correct`` toward the original layers' outputs (ridge ``ridge``). ``group_size`` and ``fit_iterations``: as in
    :class:`~lors.LorsConfig`. ``form="pivoted"`` (``"lct"`` only) stores each rank-r factorisation in
    ``r (in + out - r)`` numbers (:class:`~lors.nn.pivoted.PivotedLowRankLinear`), so a budget buys higher ranks.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if sum(x is not None for x in (fraction, rank, epsilon)) != 1:
        raise ValueError("give exactly one of fraction (budget), rank or epsilon")
    if init == "calibrated" and not calibration and moments is None:
        raise ValueError("init='calibrated' needs calibration batches (or their moments)")
    if sequential and (init != "calibrated" or not calibration):
        raise ValueError("sequential=True needs init='calibrated' and calibration batches")
    if form not in FORMS or (form == "pivoted" and method != "lct"):
        raise ValueError(f"form must be one of {FORMS} ('pivoted' for method 'lct' only), got {form!r}")
    if form == "pivoted" and fraction is None:
        raise ValueError("form='pivoted' needs a budget (fraction=): a rank or epsilon means the same in either form")
    teacher, model = model, copy.deepcopy(model)
    container, targets, paths = stack_linears(model)
    if init == "calibrated":
        moments = shrink(moments if moments is not None else input_moments(model, paths, calibration, forward),
                         shrinkage)
    else:
        moments = None
    ranks = budget_ranks(model, method, fraction, moments, model.get_submodule(scope) if scope else None,
                         allocation, floor, group_size, form=form) if fraction is not None else None
    if method == "lct":
        pattern = "|".join(re.escape(p) for p in paths)
        if ranks is not None:
            rebuild(model, ranks, calibration=moments)  # the budget's plan, checked by budget_ranks
        else:
            lct(model, rank=rank, epsilon=epsilon, targets=pattern, calibration=moments)
    else:
        cfg = LorsConfig(targets=targets, rank=rank or 1, rank_pattern=ranks or {}, epsilon=epsilon,
                         init="calibrated" if moments else "pretrained", group_size=group_size,
                         fit_iterations=fit_iterations, sharing="basis" if method == "basis" else "residual")
        convert(model, cfg, calibration=moments)
    if sequential:
        sequential_refit(model, teacher, container, targets, calibration, forward, correct, shrinkage, ridge, log)
    if form == "pivoted":
        pivot(model)
    return model


def held_out_sentences(seed: int = 0, n_eval: int = 1000) -> tuple[list[str], list[str]]:
    """(training sentences shuffled by ``seed``, ``n_eval`` held-out sentences) from :mod:`lors.data.text`."""
    from ..data.text import english_sentences

    train, held = english_sentences(seed)
    g = torch.Generator().manual_seed(seed)
    train = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
    held = [held[i] for i in torch.randperm(len(held), generator=g)[:n_eval].tolist()]
    return train, held


def run(model_name: str = "minilm", method: str = "lors", fraction: Optional[float] = None,
        rank: Optional[int] = None, epsilon: Optional[float] = None, init: str = "calibrated",
        distill_steps: int = 0, lr: Optional[float] = None, batch_size: int = 32, calibration_sentences: int = 256,
        eval_sentences: int = 1000, out: Optional[str] = None, seed: int = 0, progress: bool = True,
        checkpoint_every: int = 100, resume: bool = False, allocation: str = "uniform", sequential: bool = False,
        form: str = "factors", log=print) -> dict:
    """Compress ``model_name`` and (optionally) distil it; returns ``{"rows": [...], "history": [...], "model"}``.

    Rows compare the original, the compressed model and the distilled model on held-out sentences
    (sentences from sources never used for calibration or training). With ``out`` the final model is
    saved with :func:`lors.save` (plus the tokenizer), and distillation checkpoints go to ``out/distill``.
    """
    from ..apply.serialization import save
    from ..tasks.distill import distill

    torch.manual_seed(seed)
    teacher, tokenizer = load_encoder(model_name)
    train, held = held_out_sentences(seed, eval_sentences)
    calibration = token_batches(tokenizer, train[:calibration_sentences], batch_size)
    eval_batches = token_batches(tokenizer, held, 64)
    reference = embed(teacher, eval_batches)
    base = count_parameters(teacher.encoder)
    log(f"{model_name}: encoder {base:,} parameters; {len(train):,} training / {len(held):,} held-out sentences "
        f"(split by source); calibration on {calibration_sentences}")

    def row(name, model):
        n = count_parameters(model.encoder)
        return {"model": name, "encoder_params": n, "fraction": n / base,
                **embedding_agreement(reference, embed(model, eval_batches))}

    rows = [row("original", teacher)]
    setting = (f"budget {fraction:.0%}{', pivoted' if form == 'pivoted' else ''}" if fraction is not None else f"rank {rank}" if rank is not None
               else f"epsilon {epsilon}")
    student = compress(teacher, method, fraction, rank, epsilon, init, calibration if init == "calibrated" else None,
                       scope="encoder", allocation=allocation, sequential=sequential, form=form)
    rows.append(row(f"{method} {init}{' sequential' if sequential else ''} ({setting})", student))
    history = []
    if distill_steps > 0:
        train_batches = token_batches(tokenizer, train, batch_size)
        evaluate = lambda m: {k: round(v, 5) for k, v in embedding_agreement(reference, embed(m, eval_batches)).items()}
        history = distill(student, teacher, train_batches, distill_steps, lr=lr or 5e-4, checkpoint_every=checkpoint_every,
                          evaluate=evaluate, progress=progress, seed=seed, resume=resume,
                          run_dir=Path(out) / "distill" if out else None, log=log)
        rows.append(row(f"+ distillation ({distill_steps} steps)", student))
    log(format_rows(rows))
    if out:
        save(student, out)
        tokenizer.save_pretrained(out)
        log(f"saved to {out} (load with lors.load(<the unconverted model>, '{out}'))")
    return {"rows": rows, "history": history, "model": student}


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'model':<34}{'encoder params':>15}{'of original':>13}{'cos mean':>10}{'cos min':>9}{'top-1 agree':>13}"
             f"{'recall@10':>11}"]
    for r in rows:
        lines.append(f"{r['model']:<34}{r['encoder_params']:>15,}{100 * r['fraction']:>12.1f}%{r['cos_mean']:>10.4f}"
                     f"{r['cos_min']:>9.4f}{r['top1_agree']:>12.1f}%{r['recall@10']:>10.1f}%")
    return "\n".join(lines)
