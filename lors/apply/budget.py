"""Ranks for a parameter budget: every stacked linear of a model gets a rank so that the set keeps a fraction.

:func:`budget_ranks` works on the largest stack of identical blocks (:func:`stack_linears`) of any model
(encoders, decoder-only LMs, ViTs) and serves three structures:

* ``"lct"``: per-layer factors ``U V``, ``r (in + out)`` numbers per rank, or with ``form="pivoted"``
  (:class:`~lors.nn.pivoted.PivotedLowRankLinear`) ``r (in + out - r)`` numbers for rank r;
* ``"lors"``: one shared weight per stack (or per group of ``group_size`` adjacent blocks), paid first, plus
  per-layer residuals ``r (in + out)``;
* ``"basis"``: one output basis of rank ``k`` per stack/group plus per-layer coefficients, ``k (out + n in)``.

The fraction is of the targeted linear layers (weights and biases) by default (what "keep 80 % of the decoder's
linears" means; biases stay as they are),
or of a module's whole parameter count with ``scope=`` (its other parameters stay as they are).

Allocations: ``"uniform"`` gives every matrix the same share of its own size; ``"spectrum"`` starts every matrix
at ``floor`` times its uniform rank and spends the rest where one more rank removes the most (whitened, with
input moments) output error per stored number, each matrix's error taken relative to its output energy;
``"sensitivity"`` spends it the same way but weighs each matrix's absolute whitened error by how much the model's
loss responds to that layer's output (``sensitivity[path] = E||dL/dy||^2 / d_out``, :func:`output_sensitivity`),
so a rank goes where it removes the most expected loss, ``1/2 s sigma^2``, per stored number.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..accounting import count_parameters
from ..nn.pivoted import pivoted_rank
from ..nn.spectral import calibrated_shared, whitened_spectrum
from .discovery import IN_PROJ, find_stacks
from .linears import dense_weight
from .lors import split_groups

METHODS = ("lors", "lct", "basis")
ALLOCATIONS = ("uniform", "spectrum", "sensitivity")
FORMS = ("factors", "pivoted")


def stack_linears(model: nn.Module, targets: Optional[Sequence[str]] = None) -> tuple[str, list[str], list[str]]:
    """(container path, block-relative linear paths, full per-layer paths) of the model's largest stack."""
    stacks, examined = find_stacks(model)
    if not stacks:
        raise ValueError(f"no stack of identical blocks with linear layers found (examined: {', '.join(examined)})")
    stack = max(stacks, key=lambda s: len(s.layers))
    found = [t for t in stack.targets if not t.endswith(IN_PROJ)]
    if targets is not None:
        unknown = [t for t in targets if t not in found]
        if unknown:
            raise ValueError(f"targets {unknown} are not linear paths of the blocks of '{stack.path}'; "
                             f"allowed: {', '.join(found)}")
        found = list(targets)
    return stack.path, found, [f"{stack.path}.{i}.{t}" for i in range(len(stack.layers)) for t in found]


def max_rank(d_out: int, d_in: int, form: str = "factors") -> int:
    """The largest rank whose factors store fewer numbers than the dense matrix."""
    if form == "pivoted":
        return max(1, min(d_out, d_in) - 1)
    return max(1, (d_out * d_in - 1) // (d_out + d_in))


def rank_cost(shape, form: str = "factors"):
    """``cost(r)``: numbers that the r-th rank (1-based) adds to a matrix of ``shape`` in storage ``form``."""
    total = sum(shape)
    return (lambda r: total - 2 * r + 1) if form == "pivoted" else (lambda r: total)


def _allocate(candidates: dict, start: dict, budget: float) -> dict:
    """Greedy: ``start`` ranks, then one rank at a time to the best gain per parameter while it fits.

    ``candidates[key] = (gains (descending, one per rank), cost(r) of the r-th rank, max rank)``. Per matrix
    the gain per parameter is made non-increasing (running minimum), so its ranks are offered in order.
    """
    ranks = dict(start)
    spent = sum(cost(r) for k, r0 in ranks.items() for cost in [candidates[k][1]] for r in range(1, r0 + 1))
    offers = []
    for k, (gains, cost, cap) in candidates.items():
        best = float("inf")
        for r in range(ranks[k] + 1, cap + 1):
            best = min(best, float(gains[r - 1]) / cost(r))
            offers.append((best, k))
    for _, k in sorted(offers, key=lambda t: -t[0]):  # stable: one matrix's ranks stay in order
        cost = candidates[k][1](ranks[k] + 1)
        if ranks[k] < candidates[k][2] and spent + cost <= budget:
            ranks[k] += 1
            spent += cost
    return ranks


@torch.no_grad()
def budget_ranks(model: nn.Module, method: str, fraction: float, moments: Optional[dict] = None,
                 scope: Optional[nn.Module] = None, allocation: str = "uniform", floor: float = 0.5,
                 group_size: Optional[int] = None, targets: Optional[Sequence[str]] = None,
                 form: str = "factors", sensitivity: Optional[dict] = None) -> dict[str, int]:
    """``{full module path: rank}`` so that the stacked linears keep ``fraction`` of their parameters.

    Args:
        method: ``"lct"``, ``"lors"`` or ``"basis"`` (see the module docstring).
        fraction: in (0, 1): of the targeted linear weights, or of ``scope``'s parameters when given.
        moments: ``{path: E[x x^T]}`` input moments; the spectra are then whitened (output error).
        allocation: ``"uniform"``, ``"spectrum"`` or ``"sensitivity"`` (needs ``sensitivity``; ``"basis"``:
            uniform only).
        floor: with ``"spectrum"``, every matrix keeps at least this fraction of its uniform rank.
        group_size: LORS/basis stacks over runs of this many adjacent blocks (as ``LorsConfig.group_size``).
        form: ``"factors"`` (``U V``) or ``"pivoted"`` (``"lct"`` only: ranks costed as
            :class:`~lors.nn.pivoted.PivotedLowRankLinear` stores them).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if allocation not in ALLOCATIONS or (method == "basis" and allocation != "uniform"):
        raise ValueError(f"allocation must be one of {ALLOCATIONS} ('uniform' for method 'basis'), got {allocation!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"budget fraction must be in (0, 1), got {fraction}")
    if (allocation == "sensitivity") != (sensitivity is not None):
        raise ValueError("allocation 'sensitivity' needs sensitivity= {path: E||dL/dy||^2 / d_out} "
                         "(output_sensitivity), and only it takes one")
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    if form not in FORMS or (form == "pivoted" and method != "lct"):
        raise ValueError(f"form must be one of {FORMS} ('pivoted' for method 'lct' only), got {form!r}")
    container, targets, paths = stack_linears(model, targets)
    modules = dict(model.named_modules())
    weights = {p: dense_weight(modules[p])[0].detach().double() for p in paths}
    dense_total = sum(w.numel() for w in weights.values())
    biases = sum(modules[p].bias.numel() for p in paths if getattr(modules[p], "bias", None) is not None)
    # the biases stay as they are, but count: the linears (weights + biases) keep the fraction
    budget = fraction * (dense_total + biases) - biases if scope is None else \
        fraction * count_parameters(scope) - (count_parameters(scope) - dense_total)
    n_layers = len(paths) // len(targets)
    groups = split_groups(list(range(n_layers)), group_size if method != "lct" else None)
    if method == "basis":
        return _basis_ranks(container, targets, groups, weights, budget / dense_total)
    shared_cost = sum(weights[f"{container}.0.{t}"].numel() for t in targets) * len(groups) if method == "lors" else 0
    share = (budget - shared_cost) / dense_total  # of each matrix, for its factors
    if form == "pivoted":
        uniform = {p: pivoted_rank(tuple(w.shape), share * w.numel()) for p, w in weights.items()}
    else:
        uniform = {p: int(share * w.numel() / sum(w.shape)) for p, w in weights.items()}
    if min(uniform.values()) < 1:
        raise ValueError(f"a budget of {fraction:.0%} is below what rank 1 everywhere needs"
                         f"{' (LORS keeps one shared weight per stack)' if method == 'lors' else ''}")
    if allocation == "uniform":
        return _top_up(uniform, weights, budget - shared_cost, share, form)
    candidates = _gains(container, targets, groups, weights, moments, method, form, sensitivity)
    start = {p: max(1, int(floor * r)) for p, r in uniform.items()}
    return _allocate(candidates, start, budget - shared_cost)


def _top_up(ranks: dict, weights: dict, budget: float, share: float, form: str) -> dict:
    """Spend what rounding the uniform ranks down left over: one more rank each, largest remainder (unspent
    own share, in units of the next rank's cost) first."""
    ranks = dict(ranks)
    costs = {p: rank_cost(weights[p].shape, form) for p in ranks}
    used = {p: sum(costs[p](r) for r in range(1, r0 + 1)) for p, r0 in ranks.items()}
    spent = sum(used.values())
    remainder = {p: (share * weights[p].numel() - used[p]) / costs[p](ranks[p] + 1) for p in ranks}
    for p in sorted(ranks, key=lambda p: -remainder[p]):
        cost = costs[p](ranks[p] + 1)
        if spent + cost <= budget and ranks[p] < max_rank(*weights[p].shape, form):
            ranks[p] += 1
            spent += cost
    return ranks


def _gains(container, targets, groups, weights, moments, method, form="factors", sensitivity=None) -> dict:
    """Per matrix: (error removed by each rank -- relative to the matrix's output energy, or with ``sensitivity``
    absolute and weighted by it --, cost(r) of the r-th rank, max rank)."""
    candidates = {}
    for t in targets:
        for group in groups:
            layer_paths = [f"{container}.{i}.{t}" for i in group]
            Ws = [weights[p] for p in layer_paths]
            Cs = [moments[p] for p in layer_paths] if moments else [None] * len(Ws)
            shared = (calibrated_shared(Ws, Cs) if moments else torch.stack(Ws).mean(0)) if method == "lors" else 0
            for p, W, C in zip(layer_paths, Ws, Cs):
                spectrum = (lambda M: whitened_spectrum(M, C)) if C is not None else torch.linalg.svdvals
                scale = sensitivity[p] if sensitivity is not None else 1 / spectrum(W).pow(2).sum()
                candidates[p] = (spectrum(W - shared).pow(2) * scale, rank_cost(W.shape, form),
                                 max_rank(*W.shape, form))
    return candidates


OBJECTIVES = ("lm", "embedding")


def output_sensitivity(model: nn.Module, paths: Sequence[str], batches: Sequence[dict],
                       objective: str = "lm") -> dict[str, float]:
    """``{path: E||dL/dy||^2 / d_out}`` for the linears at ``paths``, ``y`` each layer's output, on ``batches``
    (dicts of ``input_ids``, optional ``attention_mask``; padded positions left out). One backward pass per batch;
    the model's parameters get no gradients kept. ``objective``:

    * ``"lm"``: ``L`` the causal LM's next-token cross-entropy, per target token;
    * ``"embedding"`` (sentence encoders): ``L = r . e`` per sentence, ``e`` the L2-normalised mean-pooled last
      hidden state and ``r`` a standard normal direction drawn per sentence (fixed seed), so that the expectation is
      ``||de/dy||_F^2``: how much an error in ``y`` moves the sentence embedding (``||e - e'||^2 = 2 (1 - cos)``),
      the Gauss-Newton sensitivity of the embedding's squared error.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    sums = {p: 0.0 for p in paths}
    count = 0
    outputs: dict[str, torch.Tensor] = {}
    directions = torch.Generator().manual_seed(0)

    def hook_for(p):
        def hook(module, args, out):
            out.retain_grad()
            outputs[p] = out
        return hook

    handles = [model.get_submodule(p).register_forward_hook(hook_for(p)) for p in paths]
    flags = [q.requires_grad for q in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for q in model.parameters():
            q.requires_grad_(False)
        for batch in batches:
            ids, mask = batch["input_ids"], batch.get("attention_mask")
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # a graph without weight grads
            kwargs = {k: v for k, v in batch.items() if k != "input_ids"}
            with torch.enable_grad():
                if objective == "lm":
                    logits = model(inputs_embeds=embeds, **kwargs).logits[:, :-1]
                    keep = mask[:, 1:].bool() if mask is not None else torch.ones_like(ids[:, 1:], dtype=torch.bool)
                    loss = torch.nn.functional.cross_entropy(logits[keep].float(), ids[:, 1:][keep], reduction="sum")
                    count += int(keep.sum())
                else:
                    hidden = model(inputs_embeds=embeds, **kwargs).last_hidden_state
                    m = (mask if mask is not None else torch.ones_like(ids)).unsqueeze(-1).to(hidden.dtype)
                    e = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
                    loss = (e * torch.randn(e.shape, generator=directions).to(e)).sum()
                    count += e.shape[0]
                loss.backward()
            for p, y in outputs.items():
                g = y.grad if mask is None else y.grad[mask.bool()]
                sums[p] += float(g.double().pow(2).sum()) / y.shape[-1]
            outputs.clear()
    finally:
        for h in handles:
            h.remove()
        for q, f in zip(model.parameters(), flags):
            q.requires_grad_(f)
        model.train(was_training)
    # LM: the loss is summed over tokens, so dL/dy per token is the gradient of that token's own loss (and later
    # ones'); embedding: per sentence
    return {p: s / max(count, 1) for p, s in sums.items()}


def _basis_ranks(container, targets, groups, weights, share) -> dict[str, int]:
    ranks = {}
    for t in targets:
        d_out, d_in = weights[f"{container}.0.{t}"].shape
        for group in groups:
            n = len(group)
            k = min(d_out, int(share * n * d_out * d_in / (d_out + n * d_in)))
            if k < 1:
                raise ValueError(f"the budget leaves no basis for '{container}.*.{t}'")
            ranks.update({f"{container}.{i}.{t}": k for i in group})
    return ranks
