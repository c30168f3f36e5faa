"""``lors.compress(model, calibration, config)``: compress a pretrained model and say what was done.

One call measures the calibration moments once (padding dropped), picks the shrinkage when asked
(``"auto"``: the one-shot fit that scores best on held-out ``validation`` batches), fits the factors
(LCT / LORS / basis sharing at the budget's ranks, :func:`lors.apply.budget.budget_ranks`), refits them block by
block (:mod:`lors.apply.sequential`) and moves LCT factors to pivoted storage, as the
:class:`~lors.compression.config.CompressConfig` says. It returns the compressed copy and a
:class:`CompressReport`; the model passed in is not changed.
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..accounting import count_parameters
from ..apply.budget import budget_ranks, output_sensitivity, stack_linears
from ..apply.calibration import input_moments
from ..apply.config import LorsConfig
from ..apply.lct import lct, pivot, rebuild
from ..apply.lors import convert
from ..apply.heads import NORMED, attention_parts, decompose_attention, head_geometry
from ..apply.modular import decompose_mlps, mlp_parts, modular_sizes
from ..apply.reconstruct import RECON_LOSS, RECON_LR
from ..apply.sequential import sequential_refit
from ..nn.lowrank import LowRankLinear
from .config import CompressConfig

SHRINKAGE_GRID = (0.0, 0.1, 0.2, 0.4, 0.7)
ATTENTION_PARTS = ("vo",)  # method "modular": attention parts kept per head (the rest: lct); qk lost (BENCHMARKS)


@dataclass
class CompressReport:
    """What :func:`compress` did: the recipe, where, how much was kept, and the choices it made."""

    config: dict                   # the resolved CompressConfig
    kind: str                      # "lm" or "encoder"
    container: str                 # the stack of blocks, e.g. "model.layers"
    targets: list[str]             # the linears compressed in every block
    dense_params: int              # parameters of those linears before
    params: int                    # ... and after (what the budget counts, unless the scope is the encoder)
    model_params: tuple[int, int]  # (before, after) of the whole model, each tensor once
    ranks: dict[str, int] = field(default_factory=dict)
    shrinkage: float = 0.0
    shrinkage_scores: dict[str, float] = field(default_factory=dict)
    block_errors: list[tuple[float, float]] = field(default_factory=list)  # recon: per block (before, after)
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        return self.params / self.dense_params

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction}


def model_kind(model: nn.Module) -> str:
    """``"lm"`` for a Hugging Face ``*ForCausalLM`` (or anything with ``generate`` and an LM head), else
    ``"encoder"``."""
    names = [type(model).__name__] + list(getattr(getattr(model, "config", None), "architectures", None) or [])
    if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        return "lm"
    return "lm" if callable(getattr(model, "get_output_embeddings", None)) and model.get_output_embeddings() \
        is not None and hasattr(model, "generate") else "encoder"


def as_batches(calibration, batch_size: int) -> list:
    """Calibration as a list of model-call batches: a (N, T) tensor of token ids is cut into dicts of
    ``batch_size`` windows (``use_cache=False``); a sequence of batches is returned as a list."""
    if isinstance(calibration, torch.Tensor):
        if calibration.ndim != 2 or calibration.dtype != torch.long:
            raise ValueError(f"calibration tokens must be a (N, T) tensor of token ids, got {tuple(calibration.shape)}"
                             f" {calibration.dtype}")
        return [{"input_ids": calibration[i:i + batch_size], "use_cache": False}
                for i in range(0, len(calibration), batch_size)]
    batches = list(calibration or [])
    if not batches:
        raise ValueError("calibration holds no batches: give a (N, T) tensor of token ids or a list of input dicts")
    return batches


def compress(model: nn.Module, calibration=None, config: Optional[CompressConfig] = None,
             validation=None, log: Optional[Callable[[str], None]] = None,
             **fields) -> tuple[nn.Module, CompressReport]:
    """A compressed copy of ``model`` and its :class:`CompressReport`.

    Args:
        model: a pretrained Hugging Face causal LM or encoder (any model with a stack of identical blocks).
        calibration: a (N, T) tensor of token ids, or a list of input dicts (``attention_mask`` honoured: padded
            positions are left out of every statistic). Not needed for ``init="svd"``.
        config: a :class:`CompressConfig` (default: the best recipe); or give its fields as keywords.
        validation: held-out batches (same forms as ``calibration``) for ``shrinkage="auto"``: each candidate's
            one-shot fit is scored there (causal LMs: perplexity; encoders: 1 - cosine of mean-pooled outputs
            to the original's). Never the evaluation text.
        log: called with progress lines (e.g. ``print``).
    """
    if config is not None and fields:
        raise ValueError("give config= or its fields as keywords, not both")
    kind = model_kind(model)
    cfg = (config or CompressConfig(**fields)).resolve(kind, model)
    start = time.time()
    batches = as_batches(calibration, cfg.batch_size) if cfg.init == "calibrated" else None
    container, targets, paths = stack_linears(model)
    moments = input_moments(model, paths, batches) if batches else None
    sensitivity = None
    if cfg.allocation == "sensitivity":
        sensitivity = output_sensitivity(model, paths, batches, "lm" if kind == "lm" else "embedding")
        if log:
            log(f"output sensitivity of {len(paths)} linears measured on {len(batches)} calibration batches")
    shrinkage, scores = cfg.shrinkage, {}
    if shrinkage == "auto":
        if validation is None:
            raise ValueError("shrinkage='auto' needs validation= batches (held-out calibration text) to choose on; "
                             "or give a number")
        held = as_batches(validation, cfg.batch_size)
        score = held_out_score(model, held, kind)
        shrinkage, scores = choose_shrinkage(model, moments, score, cfg, log, sensitivity=sensitivity)
        if log:
            log(f"shrinkage {shrinkage:g} chosen on {len(held)} held-out batches")
    fits: list = []
    student = fit(model, cfg, moments, shrinkage, batches, log=log, fits=fits, sensitivity=sensitivity)
    before = linear_params(model, container, targets)
    report = CompressReport(cfg.to_dict(), kind, container, targets, before,
                            linear_params(student, container, targets, model),
                            (count_parameters(model), count_parameters(student)),
                            ranks=_ranks(student), shrinkage=float(shrinkage),
                            shrinkage_scores={str(a): round(v, 4) for a, v in scores.items()},
                            block_errors=[(round(f.before, 6), round(f.after, 6)) for f in fits],
                            seconds=round(time.time() - start, 1))
    return student, report


def budget_scope(model: nn.Module) -> Optional[str]:
    """What a budget is a fraction of: an encoder's ``encoder`` module (all its parameters), else ``None`` (the
    stacked linears)."""
    return "encoder" if model_kind(model) == "encoder" and hasattr(model, "encoder") else None


def fit(model: nn.Module, cfg: CompressConfig, moments: Optional[dict], shrinkage: float,
        batches: Optional[Sequence], log=None, sequential: Optional[bool] = None, fits: Optional[list] = None,
        sensitivity: Optional[dict] = None):
    """The compressed copy for a resolved ``cfg`` with ``moments`` (and for allocation ``"sensitivity"`` the
    layers' output ``sensitivity``) measured before (``sequential`` overrides ``cfg.sequential``; the shrinkage
    search fits one-shot); block reconstruction results go to ``fits``."""
    sequential = cfg.sequential if sequential is None else sequential
    scope = budget_scope(model)
    teacher, model = model, copy.deepcopy(model)
    container, targets, paths = stack_linears(model)
    moments = shrink(moments, shrinkage) if moments is not None else None
    if cfg.method == "modular":  # MLP neurons, attention heads' features (else lct), each at the budget's fraction
        _fit_modular(model, cfg, container, targets, scope, moments, sensitivity)
    elif cfg.method == "lct" and cfg.budget is not None:  # the budget's plan, checked by budget_ranks
        rebuild(model, budget_ranks(model, "lct", cfg.budget, moments, model.get_submodule(scope) if scope else None,
                                    cfg.allocation, cfg.floor, form=cfg.form, sensitivity=sensitivity),
                calibration=moments)
    elif cfg.method == "lct":
        lct(model, rank=cfg.rank, epsilon=cfg.epsilon, targets="|".join(re.escape(p) for p in paths),
            calibration=moments)
    else:
        ranks = budget_ranks(model, cfg.method, cfg.budget, moments, model.get_submodule(scope) if scope else None,
                             cfg.allocation, cfg.floor, cfg.group_size, sensitivity=sensitivity) \
            if cfg.budget is not None else None
        convert(model, LorsConfig(targets=targets, rank=cfg.rank or 1, rank_pattern=ranks or {}, epsilon=cfg.epsilon,
                                  init="calibrated" if moments else "pretrained", group_size=cfg.group_size,
                                  fit_iterations=cfg.fit_iterations or 2,
                                  sharing="basis" if cfg.method == "basis" else "residual"), calibration=moments)
    if sequential:
        sequential_refit(model, teacher, container, targets, batches, None, cfg.correct, shrinkage, cfg.ridge, log,
                         cfg.recon_steps, cfg.recon_lr or RECON_LR, fits, cfg.recon_loss or RECON_LOSS)
    if cfg.form == "pivoted" and any(isinstance(m, LowRankLinear) for m in model.modules()):
        pivot(model)  # (a modular fit may have factorised nothing)
    return model


def _fit_modular(model, cfg: CompressConfig, container: str, targets, scope, moments, sensitivity) -> None:
    """Method ``"modular"`` at ``cfg.budget``: query-key pairs per head at the budget's share, the attention parts
    that cannot be cut per head as lct factors, then the MLP neurons and value-output features per head -- at the
    share (allocation ``"uniform"``) or where they remove the most expected loss (``"sensitivity"``,
    :func:`lors.apply.modular.modular_sizes`); what rounding leaves over goes to the MLPs."""
    blocks = model.get_submodule(container)
    block = blocks[0]
    feeds, reader = mlp_parts(block, targets)
    share = cfg.budget  # of the linears; with a scope (encoders), what leaves the scope at the budget
    if scope:
        total, linears = count_parameters(model.get_submodule(scope)), linear_params(model, container, targets)
        share = (cfg.budget * total - (total - linears)) / linears
    parts, by_heads = modular_attention(model, block, targets)
    size = lambda names: sum(p.numel() for b in blocks for t in names for p in b.get_submodule(t).parameters())
    qk, vo = by_heads[:2] if "qk" in parts else [], by_heads[-2:] if "vo" in parts else []
    pool = share * size((*feeds, reader, *vo))  # what the MLPs and value-outputs may store
    if qk:
        dense_qk = size(qk)
        decompose_attention(model, container, targets, share, moments, ("qk",))
        pool += share * dense_qk - size(qk)  # features per head are coarse: what rounding leaves over
    rest = [t for t in targets if t not in (*feeds, reader, *by_heads)]
    if rest:
        rebuild(model, budget_ranks(model, "lct", share, moments, None, cfg.allocation, cfg.floor,
                                    targets=rest, form=cfg.form, sensitivity=sensitivity), calibration=moments)
    kept, values = None, None
    if cfg.allocation == "sensitivity":
        geometry = (*vo, *head_geometry(model.config, attention_parts(block, targets), block)) if vo else None
        kept, values = modular_sizes(model, container, feeds, reader, moments, sensitivity, pool, geometry)
    if vo:
        decompose_attention(model, container, targets, share, moments, ("vo",), values=values)
        pool -= size(vo)
    mlp_share = min(1.0, pool / size((*feeds, reader)))
    decompose_mlps(model, container, targets, mlp_share, moments, kept=kept)


def modular_attention(model: nn.Module, block: nn.Module, targets: Sequence[str]) -> tuple[tuple, list[str]]:
    """(the parts of :data:`ATTENTION_PARTS` that method ``"modular"`` fits head by head, the block's linears they
    cover); ``((), [])`` when the attention is not of separate per-head projections with known head counts (then it
    is compressed by lct). Query-key selection is left to lct when queries and keys are normalised per head."""
    found = attention_parts(block, targets)
    if found is None:
        return (), []
    try:
        head_geometry(getattr(model, "config", None), found, block)
    except (ValueError, AttributeError):
        return (), []
    attention = found[0].rpartition(".")[0]
    normed = any(hasattr(block.get_submodule(attention) if attention else block, n) for n in NORMED)
    parts = tuple(p for p in ATTENTION_PARTS if not (p == "qk" and normed))
    covered = {"qk": found[:2], "vo": found[2:]}
    return parts, [t for p in parts for t in covered[p]]


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


def choose_shrinkage(model: nn.Module, moments: dict, score: Callable[[nn.Module], float], cfg: CompressConfig,
                     log=None, grid: Sequence[float] = SHRINKAGE_GRID,
                     sensitivity: Optional[dict] = None) -> tuple[float, dict]:
    """The shrinkage of ``grid`` whose one-shot fit (``cfg``, no sequential refit) scores lowest, and every score.
    ``score(model)`` must use held-out calibration text, never the evaluation text."""
    if not grid or any(not 0 <= a <= 1 for a in grid):
        raise ValueError(f"shrinkage grid values must be in [0, 1], got {grid}")
    if moments is None:
        raise ValueError("choosing the shrinkage needs calibration moments (init='calibrated')")
    scores = {}
    for alpha in grid:
        scores[alpha] = float(score(fit(model, cfg, moments, alpha, None, sequential=False, sensitivity=sensitivity)))
        if log:
            log(f"  shrinkage {alpha:g}: held-out calibration score {scores[alpha]:.4f}")
    return min(scores, key=scores.get), scores


def held_out_score(teacher: nn.Module, batches: list, kind: str) -> Callable[[nn.Module], float]:
    """``score(student)`` on held-out batches, lower is better: causal LMs, perplexity of the batches' tokens;
    encoders, mean 1 - cosine of mean-pooled outputs to the teacher's (computed here once)."""
    masks = [b.get("attention_mask") for b in batches]

    def pooled(model, b, mask):
        hidden = model(**b).last_hidden_state
        m = (mask if mask is not None else torch.ones(hidden.shape[:2])).unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)

    with torch.no_grad():
        references = [pooled(teacher.eval(), b, m) for b, m in zip(batches, masks)] if kind == "encoder" else None

    @torch.no_grad()
    def score(student: nn.Module) -> float:
        student.eval()
        total, count = 0.0, 0
        for i, (b, mask) in enumerate(zip(batches, masks)):
            if kind == "encoder":
                total += (1 - F.cosine_similarity(pooled(student, b, mask), references[i], dim=-1)).sum().item()
                count += len(references[i])
                continue
            logits, ids = student(**b).logits[:, :-1], b["input_ids"][:, 1:]
            keep = mask[:, 1:].bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
            total += F.cross_entropy(logits[keep].float(), ids[keep], reduction="sum").item()
            count += int(keep.sum())
        return math.exp(min(total / count, 50.0)) if kind == "lm" else total / count
    return score


def linear_params(model: nn.Module, container: str, targets, reference: Optional[nn.Module] = None) -> int:
    """Parameters of the stacked linears: every parameter of ``model`` not in ``reference``'s other modules."""
    reference = reference if reference is not None else model
    modules = dict(reference.named_modules())
    blocks = len(reference.get_submodule(container))
    dense = {id(p) for i in range(blocks) for t in targets for p in modules[f"{container}.{i}.{t}"].parameters()}
    other = sum(p.numel() for p in reference.parameters() if id(p) not in dense)
    return count_parameters(model) - other


def _ranks(model: nn.Module) -> dict[str, int]:
    return {n: int(m.rank) for n, m in model.named_modules() if hasattr(m, "rank") and isinstance(m.rank, int)}
