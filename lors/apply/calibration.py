"""Input statistics of linear layers from a few calibration batches (for ``init="calibrated"``).

One pass over the batches with forward pre-hooks on the requested modules accumulates,
per module, the second moment ``E[x x^T]`` of its inputs (in float64, so that outliers in float32
inputs do not swamp the small features; every real token of every batch counted once: positions that a
batch's ``attention_mask`` marks as padding are left out). :mod:`lors.nn.spectral` turns these into output-aware factorisations.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Optional

import torch
from torch import nn


def real_rows(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The rows (tokens, d) of ``x`` (..., d) that are not padding: ``mask`` (B, T) from the batch's
    ``attention_mask`` selects them when ``x`` is (B, T, d); otherwise every row."""
    if mask is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.to(torch.bool)]
    return x.reshape(-1, x.shape[-1])


def scaled_product(rows: torch.Tensor) -> torch.Tensor:
    """``rows^T rows`` (float64) with each feature scaled to a largest magnitude of 1 for the product, so that
    float32 inputs with outlier features (LLMs' massive activations) keep the small features' precision; float64
    inputs are multiplied as they are."""
    if rows.dtype == torch.float64:
        return rows.T @ rows
    scale = rows.abs().amax(0).float().clamp_min(torch.finfo(torch.float32).tiny)  # (d,)
    scaled = rows.float() / scale
    return (scaled.T @ scaled).double() * (scale.double()[:, None] * scale.double()[None, :])


def batch_mask(batch) -> Optional[torch.Tensor]:
    """A batch dict's 2-D ``attention_mask`` (1 = real token), else ``None``."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    return mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None


def default_forward(model: nn.Module, batch) -> None:
    """Call ``model`` on a batch: ``model(**batch)`` for a dict, ``model(*batch)`` for a tuple/list."""
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def input_moments(model: nn.Module, paths: Iterable[str], batches: Iterable,
                  forward: Optional[Callable[[nn.Module, object], None]] = None) -> dict[str, torch.Tensor]:
    """``{path: E[x x^T]}`` for the inputs ``x`` (last dimension) of each module at ``paths``.

    A path ending in ``.in_proj`` names an ``nn.MultiheadAttention`` whose query is recorded
    (self-attention: query = key = value). ``forward(model, batch)`` runs one batch
    (default: :func:`default_forward`). The model runs in eval mode; its mode is restored. A dict batch's
    ``attention_mask`` (B, T) drops padded positions from the moments of every (B, T, d) input.
    Modules the batches never call (``nn.MultiheadAttention.out_proj``) are left out, with a warning.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    last: list = [None, None, 0]  # (input, its x^T x, rows): layers reading one tensor (q, k, v) share the product
    mask: list = [None]

    def hook_for(path: str):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("query", kwargs.get("input"))
            if last[0] is not x:
                rows = real_rows(x.detach(), mask[0])
                last[0], last[1], last[2] = x, scaled_product(rows), len(rows)
            sums[path] = sums.get(path, 0) + last[1]
            counts[path] = counts.get(path, 0) + last[2]
        return hook

    paths = list(dict.fromkeys(paths))
    for path in paths:
        module_path = path[: -len(".in_proj")] if path.endswith(".in_proj") else path
        handles.append(model.get_submodule(module_path).register_forward_pre_hook(hook_for(path), with_kwargs=True))
    was_training = model.training
    model.eval()
    run = forward or default_forward
    try:
        n = 0
        for batch in batches:
            mask[0] = batch_mask(batch)
            run(model, batch)
            n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        last.clear()
    if n == 0:
        raise ValueError("calibration holds no batches; give an iterable of at least one input batch")
    if not sums:
        raise ValueError(f"calibration batches never reached any of {paths[:4]}; check that the batches run the model")
    unseen = [p for p in paths if p not in sums]
    if unseen:  # e.g. nn.MultiheadAttention.out_proj, whose weight is used without calling the module
        warnings.warn(f"calibration saw no inputs of {len(unseen)} layer(s) ({', '.join(unseen[:4])}"
                      f"{' ...' if len(unseen) > 4 else ''}); they are fitted to their weights instead", stacklevel=3)
    return _shared_once({p: sums[p] / max(counts[p], 1) for p in paths if p in sums})


def _shared_once(moments: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layers that read the same tensor (q, k, v) get one moment tensor object, not equal copies (a 30-layer
    LLM's moments are ~1 GB in float64; this saves the copies)."""
    kept: dict[tuple, list[torch.Tensor]] = {}
    for p, C in moments.items():
        same = kept.setdefault((tuple(C.shape), float(C.diagonal().sum())), [])
        match = next((D for D in same if torch.equal(D, C)), None)
        if match is None:
            same.append(C)
        else:
            moments[p] = match
    return moments


def measured_moments(model: nn.Module, paths: list[str], calibration, forward=None) -> dict[str, torch.Tensor]:
    """``{path: E[x x^T]}`` from ``calibration``: batches to run now, statistics measured before
    (a dict from :func:`input_moments`, returned as it is), or ``None`` (no statistics: ``{}``)."""
    if calibration is None:
        return {}
    if isinstance(calibration, dict):
        return calibration
    return input_moments(model, paths, calibration, forward)
