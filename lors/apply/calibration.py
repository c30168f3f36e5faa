"""Input statistics of linear layers from a few calibration batches (for ``init="calibrated"``).

One pass over the batches with forward pre-hooks on the requested modules accumulates,
per module, the second moment ``E[x x^T]`` of its inputs (each batch's product in the inputs'
dtype, summed in float64; every token of every batch counted once). :mod:`lors.nn.spectral` turns these into output-aware factorisations.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Optional

import torch
from torch import nn


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
    (default: :func:`default_forward`). The model runs in eval mode; its mode is restored.
    Modules the batches never call (``nn.MultiheadAttention.out_proj``) are left out, with a warning.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    last: list = [None, None]  # (input tensor, its x^T x): layers reading one tensor (q, k, v) share the product

    def hook_for(path: str):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("query", kwargs.get("input"))
            if last[0] is not x:
                rows = x.detach().reshape(-1, x.shape[-1])
                # one batch's product in the input's precision (float32: error ~1e-7 of the largest eigenvalue,
                # far below the whitening's damping), summed over batches in float64
                last[0], last[1] = x, (rows.T @ rows).double()
            sums[path] = sums.get(path, 0) + last[1]
            counts[path] = counts.get(path, 0) + x.numel() // x.shape[-1]
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
    return _shared_once({p: sums[p] / counts[p] for p in paths if p in sums})


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
