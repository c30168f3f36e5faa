"""Apply static LORS to any PyTorch model: :func:`convert`, and :func:`rebuild_stack` to replay a recorded stack.

``convert(model, LorsConfig(...))`` finds stacks of identical blocks (see
:mod:`lors.apply.discovery`) and turns every targeted weight path that exists in all
blocks (an ``nn.Linear`` such as ``self_attn.out_proj``, or the fused in-projection
of an ``nn.MultiheadAttention``) into one :class:`~lors.LorsLinearStack`. The stack
is registered next to the container as ``<parent>.lors_<container>.<path with __>``;
each block keeps its module paths, with parameter-free views in place of the Linear
layers, so the forward signature is unchanged and ``state_dict`` keys are predictable.
Each call appends one entry (its own options and stacks) to the model's
:class:`~lors.apply.record.ConversionRecord`.
"""
from __future__ import annotations

import warnings
from typing import Optional

from torch import nn

from ..nn import mha as mha_adapter
from ..nn.basis import BasisSharedStack
from ..nn.checks import per_layer
from ..nn.stack import SharedStack, shared_stacks
from ..nn.static import LorsLinearStack, StackLayer
from .calibration import measured_moments
from .config import LorsConfig
from .discovery import IN_PROJ, find_stacks, lookup, matches
from .hf import install_save_pretrained
from .linears import dense_weight, set_submodule
from .record import Conversion, StackEntry, append, fingerprint


def _holder(model: nn.Module, container_path: str) -> tuple[nn.ModuleDict, str]:
    """The ModuleDict next to the container that owns its stacks, and its path."""
    if not container_path:
        raise ValueError("the model itself is a stack; wrap it in a module to convert it")
    parent_path, _, name = container_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    attr = f"lors_{name}"
    if not hasattr(parent, attr):
        setattr(parent, attr, nn.ModuleDict())
    return getattr(parent, attr), f"{parent_path + '.' if parent_path else ''}{attr}"


def _weights(block: nn.Module, target: str):
    """(weight, bias) of a target path in one block."""
    if target.endswith(IN_PROJ):
        m = block.get_submodule(target[: -len(IN_PROJ)])
        return m.in_proj_weight, m.in_proj_bias
    return dense_weight(block.get_submodule(target))


def _install(block: nn.Module, target: str, stack: LorsLinearStack, index: int) -> None:
    if target.endswith(IN_PROJ):
        mha_adapter.attach(block.get_submodule(target[: -len(IN_PROJ)]), stack, index)
    else:
        view = StackLayer(stack, index)
        object.__setattr__(view, "original_cls", type(block.get_submodule(target)))
        set_submodule(block, target, view)


def _register(model: nn.Module, container: str, target: str, blocks: list, stack: nn.Module,
              key: Optional[str] = None) -> str:
    """Own ``stack`` next to ``container`` (as ``key``, default the target with ``__`` for dots) and point
    every block's ``target`` at its layer; returns the stack's path."""
    holder, holder_path = _holder(model, container)
    key = key or target.replace(".", "__")
    holder[key] = stack
    for i, block in enumerate(blocks):
        _install(block, target, stack, i)
    return f"{holder_path}.{key}"


def _layers(cfg: LorsConfig, stack_info) -> list[int]:
    """Indices of the blocks of ``stack_info`` that join a stack."""
    n = len(stack_info.layers)
    if cfg.layers_to_transform is None:
        return list(range(n))
    bad = [i for i in cfg.layers_to_transform if i >= n]
    if bad:
        raise ValueError(f"layers_to_transform {bad} out of range for '{stack_info.path}' with {n} blocks "
                         f"(allowed: 0..{n - 1})")
    return list(cfg.layers_to_transform)


def layer_groups(cfg: LorsConfig, stack_info) -> list[list[int]]:
    """The blocks of each stack made for one target: all of them, or runs of ``group_size`` adjacent ones
    (a last group of one block joins the one before, since a stack needs two)."""
    return split_groups(_layers(cfg, stack_info), cfg.group_size)


def split_groups(layers: list[int], group_size: Optional[int]) -> list[list[int]]:
    """``layers`` in runs of ``group_size`` (``None``: one run); a last run of one joins the one before."""
    if group_size is None:
        return [list(layers)]
    groups = [list(layers[i:i + group_size]) for i in range(0, len(layers), group_size)]
    if len(groups) > 1 and len(groups[-1]) == 1:
        last = groups.pop()
        groups[-1] = groups[-1] + last
    return groups


def _ranks(cfg: LorsConfig, container: str, target: str, weights, layers: list[int], moments=None) -> list[int]:
    if cfg.epsilon is not None:
        total = LorsLinearStack.residual_ranks(weights, cfg.epsilon, moments)
        return [max(1, -(-r // cfg.groups)) for r in total]  # ceil(r / groups) per group
    ranks = []
    for i in layers:
        override = lookup(cfg.rank_pattern, f"{container}.{i}.{target}")
        ranks.append(cfg.rank if override is None else override)
    return ranks


def _select(model: nn.Module, cfg: LorsConfig) -> list:
    """``(stack info, target)`` for every targeted weight path of every stack of identical blocks."""
    stacks, examined = find_stacks(model, cfg.min_layers)
    if not stacks:
        raise ValueError(f"no stacks of >= {cfg.min_layers} identical blocks with Linear layers found; examined "
                         f"containers: {', '.join(examined) or '(no ModuleList or Sequential in the model)'}")
    selected = [(s, t) for s in stacks for t in s.targets
                if matches(cfg.targets, t) and not (cfg.exclude_modules is not None and matches(cfg.exclude_modules, t))]
    if not selected:
        available = sorted({t for s in stacks for t in s.targets})
        raise ValueError(f"targets={cfg.targets!r} matches no weight path in the stacks "
                         f"({', '.join(s.path for s in stacks)}); available paths: {', '.join(available)}")
    return selected


def _fit_stack(cfg: LorsConfig, stack_info, target: str, layers: list[int], moments: dict) -> nn.Module:
    """The LORS stack replacing ``target`` in the ``layers`` of ``stack_info`` (fitted unless init='paper')."""
    blocks = [stack_info.layers[i] for i in layers]
    layer_moments = [moments.get(f"{stack_info.path}.{i}.{target}") for i in layers] if moments else None
    if layer_moments is not None and any(m is None for m in layer_moments):
        layer_moments = None  # not every layer was seen: fit this stack to its weights
    pairs = [_weights(b, target) for b in blocks]
    weights = [w for w, _ in pairs]
    biases = None if pairs[0][1] is None else [b for _, b in pairs]
    ranks = _ranks(cfg, stack_info.path, target, weights, layers, layer_moments)
    out_f, in_f = weights[0].shape
    if cfg.sharing == "basis":
        return _basis_stack(cfg, f"{stack_info.path}.*.{target}", weights, biases, ranks, layer_moments)
    for i, r in enumerate(ranks):
        if r * cfg.groups > min(out_f, in_f):
            raise ValueError(f"rank {r} x groups {cfg.groups} is too large for '{stack_info.path}.{layers[i]}."
                             f"{target}' ({out_f} x {in_f}); allowed: rank * groups <= {min(out_f, in_f)}")
    if cfg.init == "paper":
        stack = LorsLinearStack(len(blocks), in_f, out_f, ranks, cfg.groups, bias=biases is not None,
                                device=weights[0].device, dtype=weights[0].dtype)
    else:
        stack = LorsLinearStack.from_weights(weights, biases, ranks, cfg.groups, input_moments=layer_moments,
                                             iterations=cfg.fit_iterations)
    dense_count = sum(w.numel() for w in weights) + (0 if biases is None else sum(b.numel() for b in biases))
    if sum(p.numel() for p in stack.parameters()) > dense_count:
        warnings.warn(f"LORS stack for '{stack_info.path}.*.{target}' (ranks {ranks}) holds more parameters "
                      f"than the {len(blocks)} dense layers it replaces; lower rank/epsilon to save memory",
                      stacklevel=3)
    return stack


def _basis_stack(cfg: LorsConfig, where: str, weights, biases, ranks, moments) -> BasisSharedStack:
    out_f, in_f = weights[0].shape
    if len(set(ranks)) != 1 or not 1 <= ranks[0] <= out_f:
        raise ValueError(f"sharing='basis' needs one basis rank in 1..{out_f} for all blocks of '{where}', "
                         f"got {sorted(set(ranks))}")
    if cfg.init == "paper":
        return BasisSharedStack(len(weights), in_f, out_f, ranks[0], bias=biases is not None,
                                device=weights[0].device, dtype=weights[0].dtype)
    return BasisSharedStack.from_weights(weights, biases, ranks[0], moments)


def convert(model: nn.Module, config: Optional[LorsConfig] = None, calibration=None, forward=None,
            **kwargs) -> nn.Module:
    """Apply static LORS to every targeted weight path of every stack in ``model`` (in place).

    Returns ``model``. The call appends one entry (this config and the stacks it made) to
    ``model.lors_conversion`` (a :class:`~lors.apply.record.ConversionRecord`): :func:`lors.save`
    writes it and :func:`lors.load` replays every entry in order. Keyword arguments build a
    :class:`LorsConfig` when ``config`` is not given.

    ``calibration`` (needed by ``init="calibrated"``): an iterable of input batches, run once
    through the model (``forward(model, batch)``, default ``model(**batch)`` / ``model(*batch)``)
    to measure each targeted layer's input statistics, or those statistics already measured
    (``{path: E[x x^T]}`` from :func:`lors.apply.calibration.input_moments`).
    """
    cfg = config if config is not None else LorsConfig(**kwargs)
    if (cfg.init == "calibrated") != (calibration is not None):
        raise ValueError("init='calibrated' needs calibration= (an iterable of input batches), and calibration= "
                         f"is only used with init='calibrated' (got init={cfg.init!r})")
    base_fingerprint = fingerprint(model)
    selected = _select(model, cfg)
    paths = [f"{s.path}.{i}.{t}" for s, t in selected for i in _layers(cfg, s)]
    moments = measured_moments(model, paths, calibration, forward)
    entries = []
    for stack_info, target in selected:
        for g, layers in enumerate(layer_groups(cfg, stack_info)):
            stack = _fit_stack(cfg, stack_info, target, layers, moments)
            key = target.replace(".", "__") + (f"__g{g}" if cfg.group_size else "")
            path = _register(model, stack_info.path, target, [stack_info.layers[i] for i in layers], stack, key)
            groups = per_layer(cfg.groups, len(layers), "groups")
            entries.append(StackEntry(stack_info.path, target, path, list(stack.ranks), groups,
                                      stack.bias is not None, layers, cfg.sharing))
    append(model, Conversion("lors", cfg.to_dict(), entries), base_fingerprint)
    apply_freezing(model, cfg)
    install_save_pretrained(model)
    return model


def apply_freezing(model: nn.Module, cfg: LorsConfig) -> None:
    """Apply ``train_shared``/``freeze_base``/``modules_to_save`` of ``cfg`` to the model as it is now."""
    if cfg.freeze_base:
        stack_params = {id(p) for m in model.modules() if isinstance(m, SharedStack) for p in m.parameters()}
        keep = cfg.modules_to_save or []
        saved = {id(p) for name, m in model.named_modules() if name and any(name == k or name.endswith("." + k)
                                                                          for k in keep) for p in m.parameters()}
        for p in model.parameters():
            if id(p) not in stack_params and id(p) not in saved:
                p.requires_grad_(False)
    if not cfg.train_shared:
        for _, stack in shared_stacks(model):
            for p in stack.shared_parameters():
                p.requires_grad_(False)


def rebuild_stack(model: nn.Module, entry: StackEntry) -> None:
    """Recreate one recorded stack on an unconverted model (structure only, paper init)."""
    blocks = list(model.get_submodule(entry.container).children())
    if len(entry.layers) != len(entry.ranks) or max(entry.layers) >= len(blocks):
        raise ValueError(f"'{entry.container}' has {len(blocks)} blocks, the checkpoint expects "
                         f"blocks {entry.layers}")
    blocks = [blocks[i] for i in entry.layers]
    weight, _ = _weights(blocks[0], entry.target)
    out_f, in_f = weight.shape
    kw = dict(bias=entry.bias, device=weight.device, dtype=weight.dtype)
    if entry.sharing == "basis":
        stack = BasisSharedStack(len(blocks), in_f, out_f, entry.ranks[0], **kw)
    else:
        stack = LorsLinearStack(len(blocks), in_f, out_f, entry.ranks, entry.groups, **kw)
    _register(model, entry.container, entry.target, blocks, stack, entry.stack.rpartition(".")[2])
