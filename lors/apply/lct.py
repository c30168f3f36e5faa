"""LCT on any model: :func:`lct` factorises linear layers into :class:`~lors.LowRankLinear`;
:func:`rebuild` replays a saved plan ``{path: rank}`` (no choice, no safety checks: the plan was checked
when it was made). Each call appends one ``kind="lct"`` entry to the model's conversion record.
"""
from __future__ import annotations

import re
import warnings
from typing import Optional

from torch import nn

from ..nn.lowrank import LowRankLinear
from ..nn.pivoted import PivotedLowRankLinear
from .calibration import measured_moments
from .config import LctConfig
from .hf import install_save_pretrained
from .linears import dense_weight, is_conv1d, is_linear, set_submodule, tied_parameter_ids
from .record import Conversion, append, fingerprint, get_record


def fraction_rank(shape: tuple[int, int], fraction: float) -> int:
    """The rank whose factors store ``fraction`` of a (out, in) matrix: ``floor(f out in / (out + in))``, >= 1."""
    out_f, in_f = shape
    return max(1, int(fraction * out_f * in_f / (out_f + in_f)))


def _factorise(model: nn.Module, path: str, rank: Optional[int], epsilon: Optional[float],
               moment=None, fraction: Optional[float] = None) -> LowRankLinear:
    """The LowRankLinear for the layer at ``path`` (SVD of its weight, whitened when ``moment`` is given)."""
    linear = model.get_submodule(path)
    weight, bias = dense_weight(linear)
    if fraction is not None:
        rank = fraction_rank(tuple(weight.shape), fraction)
    layer = LowRankLinear.from_weight(weight, bias, rank=rank, epsilon=None if rank else epsilon,
                                      input_moment=moment)
    if is_conv1d(linear):
        layer.original_cls = type(linear)  # merge() rebuilds a Conv1D
    return layer


def targeted_paths(model: nn.Module, targets: str) -> list[str]:
    """Paths of the ``nn.Linear``/``Conv1D`` modules whose full path the regex ``targets`` matches (an error
    listing the model's linear paths when none does)."""
    pattern = re.compile(targets)
    paths = [name for name, m in model.named_modules() if is_linear(m, exact=True) and pattern.fullmatch(name)]
    if not paths:
        linears = [name for name, m in model.named_modules() if is_linear(m)]
        raise ValueError(f"targets={targets!r} matches no nn.Linear or Conv1D; the model's linear paths are: "
                         f"{', '.join(linears[:20]) or '(none)'}{' ...' if len(linears) > 20 else ''}")
    return paths


def _why_dense(model: nn.Module, path: str, rank: Optional[int], tied: set) -> Optional[str]:
    linear = model.get_submodule(path)
    if id(linear.weight) in tied:
        return "weight is tied to another module"
    shape = tuple(dense_weight(linear)[0].shape)
    if rank is not None and rank > min(shape):
        return f"rank {rank} > min{shape}"
    return None


def lct(model: nn.Module, config: Optional[LctConfig] = None, calibration=None, forward=None,
        verbose: bool = False, **kwargs) -> nn.Module:
    """Factorise the targeted linear layers (``nn.Linear``, GPT-2 ``Conv1D``) of ``model`` in place.

    ``config`` is an :class:`~lors.LctConfig` (or give its fields as keywords: ``rank=``,
    ``epsilon=`` or ``fraction=`` (each matrix keeps that share of its parameters), ``targets=``,
    ``skip_if_larger=``). ``calibration``: optional iterable of input
    batches (run once, ``forward(model, batch)``) or precomputed input moments; the factors then
    fit each layer's outputs on these inputs instead of its weights, and ``epsilon`` bounds the
    relative output error (see :mod:`lors.nn.spectral`). ``verbose`` prints each layer's rank.

    Layers are never factorised when their weight is tied to another module (factorising
    would untie it), when ``rank`` exceeds ``min(in, out)``, or (``skip_if_larger``) when the
    factors would not be smaller; the first two are listed with the reason in this call's record
    entry (``skipped``) and named in one warning. Returns ``model``. Raises ``ValueError`` if no
    linear layer matches. To rebuild a saved plan ``{path: rank}``, use :func:`rebuild`.
    """
    if isinstance(kwargs.get("rank"), dict):
        raise ValueError("lct(rank=...) takes one int; to replay a saved {path: rank} plan use lors.apply.lct.rebuild")
    cfg = config if config is not None else LctConfig(**kwargs)
    base_fingerprint = fingerprint(model)
    paths = targeted_paths(model, cfg.targets)
    tied = tied_parameter_ids(model)
    moments = measured_moments(model, paths, calibration, forward)
    skipped, ranks, before, after = {}, {}, 0, 0
    for path in paths:
        reason = _why_dense(model, path, cfg.rank, tied)
        if reason:
            skipped[path] = reason
            continue
        layer = _factorise(model, path, cfg.rank, cfg.epsilon, moments.get(path), cfg.fraction)
        if cfg.skip_if_larger and layer.num_stored() >= layer.num_dense():
            if verbose:
                print(f"  {path}: rank {layer.rank} would not save parameters, kept dense")
            continue
        before, after = before + layer.num_dense(), after + layer.num_stored()
        if verbose:
            print(f"  {path}: rank {layer.rank} ({layer.num_stored():,} vs {layer.num_dense():,} parameters)")
        set_submodule(model, path, layer)
        ranks[path] = layer.rank
    if verbose and before:
        print(f"lct: {before:,} -> {after:,} parameters in the factorised layers ({100 * (1 - after / before):.1f}% fewer)")
    if skipped:
        listed = "; ".join(f"{p} ({why})" for p, why in list(skipped.items())[:6])
        warnings.warn(f"lct kept {len(skipped)} targeted layer(s) dense: {listed}"
                      f"{' ...' if len(skipped) > 6 else ''}", stacklevel=2)
    append(model, Conversion("lct", cfg.to_dict(), ranks=ranks, skipped=skipped), base_fingerprint)
    install_save_pretrained(model)
    return model


def rebuild(model: nn.Module, ranks: dict[str, int], calibration=None, forward=None) -> nn.Module:
    """Factorise exactly the layers of a plan ``{module path: rank}`` (from :func:`lct_ranks` or a record), in place.

    The factors are the truncated SVD of each layer's current weight (whitened with ``calibration``),
    so this serves both to rebuild a model before loading its saved factors and to cut a trained
    model at planned ranks. Returns ``model``.
    """
    base_fingerprint = fingerprint(model)
    factorise_plan(model, ranks, measured_moments(model, list(ranks), calibration, forward))
    append(model, Conversion("lct", None, ranks=dict(ranks)), base_fingerprint)
    install_save_pretrained(model)
    return model


def factorise_plan(model: nn.Module, ranks: dict[str, int], moments: Optional[dict] = None) -> None:
    """Replace each layer of the plan by its factors at the planned rank (no record entry: see :func:`rebuild`)."""
    missing = [p for p in ranks if not is_linear(model.get_submodule(p), exact=True)]
    if missing:
        raise ValueError(f"the plan names layers that are not nn.Linear/Conv1D here: {missing[:4]}")
    for path, rank in ranks.items():
        set_submodule(model, path, _factorise(model, path, rank, None, (moments or {}).get(path)))


def pivot(model: nn.Module, paths: Optional[list[str]] = None) -> nn.Module:
    """Move factorised layers (:class:`~lors.LowRankLinear`, all of them or those at ``paths``) to pivoted storage
    (:class:`~lors.nn.pivoted.PivotedLowRankLinear`, ``r (in + out - r)`` numbers), in place; the function is
    unchanged (to float rounding). Appends one ``kind="pivot"`` record entry. Returns ``model``."""
    found = lct_ranks(model)
    paths = list(found) if paths is None else list(paths)
    wrong = [p for p in paths if p not in found]
    if wrong:
        raise ValueError(f"pivot() moves LowRankLinear layers; not LowRankLinear here: {wrong[:4]}")
    if not paths:
        raise ValueError("the model has no LowRankLinear layers to pivot; factorise them first (lors.lct)")
    base_fingerprint = fingerprint(model)
    for path in paths:
        _replace_factorised(model, path, PivotedLowRankLinear.from_lowrank(model.get_submodule(path)))
    append(model, Conversion("pivot", None, ranks={p: found[p] for p in paths}), base_fingerprint)
    install_save_pretrained(model)
    return model


def pivot_plan(model: nn.Module, ranks: dict[str, int]) -> None:
    """Replace the factorised layers of a plan by empty pivoted layers of the same rank (for loading saved tensors)."""
    for path, rank in ranks.items():
        old = model.get_submodule(path)
        if not isinstance(old, LowRankLinear):
            raise ValueError(f"the pivot plan names '{path}', which is not a LowRankLinear here")
        _replace_factorised(model, path, PivotedLowRankLinear(old.in_features, old.out_features, rank,
                                                              bias=old.bias is not None, device=old.U.device,
                                                              dtype=old.U.dtype))


def _replace_factorised(model: nn.Module, path: str, layer: nn.Module) -> None:
    """Put ``layer`` at ``path``, keeping the replaced layer's ``original_cls`` (merge() rebuilds a Conv1D)."""
    old = model.get_submodule(path)
    if hasattr(old, "original_cls"):
        layer.original_cls = old.original_cls
    set_submodule(model, path, layer)


def sync_ranks(model: nn.Module) -> None:
    """Write the current ranks of the recorded LCT layers into the model's record (after re-truncation)."""
    record = get_record(model)
    for conversion in record.conversions if record else []:
        for path in conversion.ranks:
            conversion.ranks[path] = model.get_submodule(path).rank


def lct_ranks(model: nn.Module) -> dict[str, int]:
    """``{module path: rank}`` of every ``LowRankLinear`` in ``model``."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, LowRankLinear)}
