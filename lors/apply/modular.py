"""Modular decomposition of a transformer MLP (MoDeGPT's type I): keep ``k`` intermediate neurons, refit ``down``.

An MLP ``y = D h(x)``, ``h = act(G x) * (U x)`` (gated) or ``act(U x)``, is compressed as one module: only ``k`` of
its intermediate neurons are kept -- rows ``S`` of ``G`` and ``U`` -- and the output projection is refitted by least
squares to make up for the dropped ones (a Nyström approximation of the neurons' correlation),

    D' = D X[:, S] (C[S, S] + lambda I)^{-1},   C = E[h_c h_c^T],   X = E[h_o h_c^T],

with ``h_o`` the original MLP's intermediate activations and ``h_c`` the compressed network's (``X = C`` in a
one-shot fit). Neurons are chosen by the output energy each one carries alone, ``E[h_j^2] ||D[:, j]||^2``. (MoDeGPT
ranks them by ridge leverage scores of ``C``, ``diag(C (C + lambda I)^{-1})``; on all-MiniLM-L6-v2 at 50 % that kept
mean cosine 0.757, leverage times ``||D[:, j]||^2`` 0.812, the output energy 0.836: BENCHMARKS.md.) The kept MLP is three dense linears of ``k``
intermediate features (``3 d k`` numbers, no factor overhead); with ``k`` the full width it is the original MLP.

The change is recorded (kind ``"neurons"``: ``{path: k}`` for every linear, ``config["readers"]`` the projections
whose inputs shrink) so that a saved model is rebuilt by :func:`neurons_plan`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..nn.spectral import damped
from .linears import dense_weight, is_linear, make_dense, set_submodule

RIDGE = 1e-3  # lambda of the refit of D, relative to mean(diag C)
MLP_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"), ("up_proj", "down_proj"), ("fc1", "fc2"),
             ("c_fc", "c_proj"), ("dense_h_to_4h", "dense_4h_to_h"), ("intermediate.dense", "output.dense"))


def mlp_parts(block: nn.Module, targets: Sequence[str]) -> tuple[list[str], str]:
    """(the linears that make the intermediate features, the one that reads them), block-relative paths among
    ``targets``; a ``ValueError`` naming what was found when the block has no MLP of a known layout."""
    for names in MLP_NAMES:
        *inputs, reader = names
        for t in targets:
            prefix = t[: -len(reader)] if t.endswith("." + reader) or t == reader else None
            if prefix is None:
                continue
            feeds = [prefix + n for n in inputs]
            if all(f in targets for f in feeds) and all(is_linear(block.get_submodule(p)) for p in feeds + [t]):
                width = dense_weight(block.get_submodule(t))[0].shape[1]
                if all(dense_weight(block.get_submodule(f))[0].shape[0] == width for f in feeds):
                    return feeds, t
    layouts = ", ".join("/".join(n) for n in MLP_NAMES)
    raise ValueError(f"modular decomposition needs an MLP of separate linears ({layouts}); the block's targets are "
                     f"{list(targets)} (a fused gate_up is not supported)")


def modular_applies(model: nn.Module) -> bool:
    """Whether every block of ``model``'s stack has an MLP of separate linears that :func:`mlp_parts` recognises
    (``False`` e.g. for a fused ``gate_up_proj``): what the default method (``CompressConfig.resolve``) checks."""
    from .budget import stack_linears

    container, targets, _ = stack_linears(model)
    try:
        for block in model.get_submodule(container):
            mlp_parts(block, targets)
    except ValueError:
        return False
    return True


def neuron_scores(C: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The output energy of each neuron alone: ``E[h_j^2] ||D[:, j]||^2``."""
    return C.double().diagonal().clamp_min(0) * down.double().pow(2).sum(0)


def select_neurons(C: torch.Tensor, down: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` neurons to keep (sorted indices), by :func:`neuron_scores`."""
    if not 1 <= k <= C.shape[0]:
        raise ValueError(f"kept neurons must be in [1, {C.shape[0]}], got {k}")
    return neuron_scores(C, down).topk(k).indices.sort().values


def refit_down(down: torch.Tensor, C: torch.Tensor, X: torch.Tensor, keep: torch.Tensor,
               ridge: float = RIDGE) -> torch.Tensor:
    """``D X[:, S] (C[S, S] + lambda I)^{-1}`` in float64: the least-squares output projection of the kept
    neurons ``S`` (``X = C`` and every neuron kept: ``D`` itself, up to the ridge)."""
    D, Css = down.double(), C.double()[keep][:, keep]
    target = D @ X.double()[:, keep]  # (out, k)
    return torch.linalg.solve(damped(Css, ridge), target.T).T


@torch.no_grad()
def prune_mlp(block: nn.Module, feeds: Sequence[str], reader: str, keep: torch.Tensor,
              down: Optional[torch.Tensor] = None) -> None:
    """Replace ``block``'s MLP linears by ones holding only the neurons ``keep`` (``down``: the reader's new weight
    (out, k); default its columns ``keep``)."""
    for name in feeds:
        module = block.get_submodule(name)
        W, b = dense_weight(module)
        set_submodule(block, name, make_dense(type(module), W[keep].clone(), None if b is None else b[keep].clone()))
    module = block.get_submodule(reader)
    W, b = dense_weight(module)
    new = W[:, keep] if down is None else down
    set_submodule(block, reader, make_dense(type(module), new.to(W.dtype).clone(), None if b is None else b.clone()))


def kept_neurons(width: int, fraction: float, per_neuron: int = 1, fixed: int = 0) -> int:
    """Neurons an MLP of ``width`` keeps at ``fraction`` of its parameters, ``per_neuron * width + fixed`` (``fixed``:
    what does not shrink with the neurons, e.g. the output projection's bias)."""
    total = fraction * (per_neuron * width + fixed)
    return max(1, min(width, int((total - fixed) / per_neuron + 1e-9)))  # rounded down: the budget is kept


@torch.no_grad()
def neurons_plan(model: nn.Module, sizes: dict[str, int], readers: Sequence[str]) -> None:
    """Shrink the recorded linears to their kept sizes with empty weights (for loading saved tensors): a reader's
    input features, every other linear's output features."""
    for path, k in sizes.items():
        module = model.get_submodule(path)
        W, b = dense_weight(module)
        shape = (W.shape[0], k) if path in readers else (k, W.shape[1])
        bias = None if b is None else (b if path in readers else b[:k])
        weight = torch.empty(shape, dtype=W.dtype, device=W.device)
        set_submodule(model, path, make_dense(type(module), weight, None if bias is None else bias.clone()))


@torch.no_grad()
def neuron_cost(block: nn.Module, feeds: Sequence[str], reader: str) -> tuple[int, int]:
    """(numbers one intermediate neuron stores: a row (+ bias) of each feeding linear and a column of the reader,
    numbers that do not shrink with the neurons: the reader's bias)."""
    D, bias = dense_weight(block.get_submodule(reader))
    made = [dense_weight(block.get_submodule(f)) for f in feeds]
    return D.shape[0] + sum(W.shape[1] + (b is not None) for W, b in made), 0 if bias is None else bias.numel()


def decompose_mlps(model: nn.Module, container: str, targets: Sequence[str], fraction: float,
                   moments: Optional[dict] = None, ridge: float = RIDGE,
                   kept: Optional[Sequence[int]] = None) -> dict[str, int]:
    """Keep ``fraction`` (in (0, 1]; 1: every neuron, the same MLP) of every block's MLP neurons (one-shot:
    selection and refit on the original network's moments ``{path: E[x x^T]}``, which must hold the readers'
    inputs; without moments, the neurons with the largest ``||D[:, j]||^2`` and no refit); ``kept``: per block, the
    neurons to keep instead. Records a ``"neurons"`` entry; returns ``{path: kept size}``."""
    from .hf import install_save_pretrained
    from .record import Conversion, append, fingerprint

    if not 0 < fraction <= 1:
        raise ValueError(f"the MLPs' kept fraction must be in (0, 1], got {fraction}")
    blocks = model.get_submodule(container)
    feeds, reader = mlp_parts(blocks[0], targets)
    base_fingerprint = fingerprint(model)
    sizes, readers = {}, []
    for i, block in enumerate(blocks):
        D = dense_weight(block.get_submodule(reader))[0]
        k = kept_neurons(D.shape[1], fraction, *neuron_cost(block, feeds, reader)) if kept is None else kept[i]
        path = f"{container}.{i}.{reader}"
        C = moments.get(path) if moments else None
        if C is None:
            C = torch.eye(D.shape[1], dtype=torch.float64)
        keep = select_neurons(C, D, k)
        prune_mlp(block, feeds, reader, keep, refit_down(D, C, C, keep, ridge) if moments and k < D.shape[1] else None)
        sizes.update({f"{container}.{i}.{n}": k for n in (*feeds, reader)})
        readers.append(path)
    append(model, Conversion("neurons", {"readers": readers}, ranks=sizes), base_fingerprint)
    install_save_pretrained(model)
    return sizes


@torch.no_grad()
def modular_sizes(model: nn.Module, container: str, feeds: Sequence[str], reader: str, moments: dict,
                  sensitivity: dict, budget: float, vo: Optional[tuple[str, str, int, int, int]] = None
                  ) -> tuple[list[int], Optional[list[int]]]:
    """(per block: MLP neurons kept, value features kept per head or ``None``) spending ``budget`` numbers (the MLPs'
    and, with ``vo = (value path, output path, heads, kv heads, head_dim)``, the value-output projections' storage)
    where they remove the most expected loss per number: a neuron's gain is the loss sensitivity of the MLP's output
    (:func:`lors.apply.budget.output_sensitivity`) times its output energy :func:`neuron_scores`, a value feature's
    that of the attention output times the energy it carries (:func:`lors.apply.heads.vo_gains`). Every block keeps
    at least one of each."""
    from .budget import _allocate
    from .heads import vo_gains

    candidates = {}
    for i, block in enumerate(model.get_submodule(container)):
        path = f"{container}.{i}."
        D = dense_weight(block.get_submodule(reader))[0]
        per, fixed = neuron_cost(block, feeds, reader)
        gains = neuron_scores(moments[path + reader], D).sort(descending=True).values * sensitivity[path + reader]
        candidates[("mlp", i)] = (gains, lambda r, per=per: per, D.shape[1])
        budget -= fixed
        if vo:
            v, o, heads, kv, dim = vo
            (Wv, bv), (Wo, bo) = dense_weight(block.get_submodule(v)), dense_weight(block.get_submodule(o))
            per = kv * (Wv.shape[1] + (bv is not None)) + heads * Wo.shape[0]
            gains = vo_gains(Wo, moments[path + o], heads, kv, dim) * sensitivity[path + o]
            candidates[("vo", i)] = (gains, lambda r, per=per: per, dim)
            budget -= 0 if bo is None else bo.numel()
    kept = _allocate(candidates, {k: 1 for k in candidates}, budget)
    blocks = range(len(model.get_submodule(container)))
    return [kept[("mlp", i)] for i in blocks], [kept[("vo", i)] for i in blocks] if vo else None

