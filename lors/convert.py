"""Apply LORS or LCT to any PyTorch model, and merge back to dense.

``convert(model, LorsConfig(...))`` finds stacks of identical blocks (see
:mod:`lors.discovery`) and turns every targeted weight path that exists in all
blocks (an ``nn.Linear`` such as ``self_attn.out_proj``, or the fused in-projection
of an ``nn.MultiheadAttention``) into one :class:`~lors.LorsLinearStack`. The stack
is registered next to the container as ``<parent>.lors_<container>.<path with __>``;
each block keeps its module paths, with parameter-free views in place of the Linear
layers, so the forward signature is unchanged and ``state_dict`` keys are predictable.

``lct(model, rank=..., epsilon=...)`` replaces targeted ``nn.Linear`` layers by
``LowRankLinear``. ``merge(model)`` returns a new dense model.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .discovery import IN_PROJ, find_stacks, lookup, matches
from .hf import install_save_pretrained
from .linears import dense_weight, is_conv1d, is_linear, make_dense
from .nn import mha as mha_adapter
from .nn.checks import epsilon_in_range, per_layer, positive_int
from .nn.lowrank import LowRankLinear
from .nn.static import LorsLinearStack, StackLayer

INITS = ("pretrained", "calibrated", "paper")


@dataclass
class LorsConfig:
    """How :func:`convert` applies static LORS.

    Attributes:
        targets: which weight paths inside a block to convert. A list of names matches a path
            equal to a name or ending in ``.name`` (``["query", "value"]``); a string is a regex
            matched against the whole relative path (``r"attention\\..*"``). ``None``: every
            Linear and MultiheadAttention in-projection of every stack.
        rank: residual rank per group, for every layer unless overridden.
        groups: residual groups per layer.
        rank_pattern: overrides ``{name: rank}``; a key matches the full per-layer path or any
            dotted suffix of it, so ``"self_attn.out_proj"`` overrides a path in every layer and
            ``"layers.5.linear1"`` one layer.
        epsilon: with ``init="pretrained"``, choose each layer's residual rank as the smallest
            with ``||W_i - W_i'||_F <= epsilon ||W_i||_F`` instead of ``rank``.
        min_layers: smallest number of identical blocks that counts as a stack.
        init: ``"pretrained"`` (shared = mean of the layers, residual = truncated SVD of
            ``W_i - mean``), ``"calibrated"`` (the same fitted to the layers' outputs on
            calibration inputs: give ``calibration=`` to :func:`convert`; see :mod:`lors.nn.whiten`)
            or ``"paper"`` (Kaiming shared and A, zero B and biases).
        exclude_modules: weight paths inside a block to leave dense, matched like ``targets``
            (a list of names or suffixes, or a regex).
        layers_to_transform: indices of the blocks that join each stack (at least two); the other
            blocks keep their own dense weights. ``None``: all blocks.
        train_shared: ``False`` freezes every shared weight (fine-tuning a converted pretrained
            model: only the residuals, biases and ``modules_to_save`` train).
        freeze_base: freeze every parameter outside the LORS stacks except ``modules_to_save``
            (PEFT's behaviour); ``False`` (default) leaves them trainable, as when training from scratch.
        modules_to_save: module names (or dotted suffixes of module paths, e.g. ``["classifier"]``)
            that stay trainable under ``freeze_base``.
    """

    targets: Union[Sequence[str], str, None] = None
    rank: int = 8
    groups: int = 1
    rank_pattern: dict = field(default_factory=dict)
    epsilon: Optional[float] = None
    min_layers: int = 2
    init: str = "pretrained"
    exclude_modules: Union[Sequence[str], str, None] = None
    layers_to_transform: Optional[Sequence[int]] = None
    train_shared: bool = True
    freeze_base: bool = False
    modules_to_save: Optional[Sequence[str]] = None

    def __post_init__(self):
        positive_int(self.rank, "rank")
        positive_int(self.groups, "groups")
        positive_int(self.min_layers, "min_layers")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.epsilon is not None:
            epsilon_in_range(self.epsilon)
            if self.init == "paper":
                raise ValueError("epsilon needs init='pretrained' or 'calibrated' (it measures the error of the "
                                 "approximation)")
        for key, value in self.rank_pattern.items():
            positive_int(value, f"rank_pattern[{key!r}]")
        if isinstance(self.targets, (list, tuple)):
            self.targets = list(self.targets)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = list(self.exclude_modules)
        if self.layers_to_transform is not None:
            layers = list(self.layers_to_transform)
            if len(layers) < 2 or len(set(layers)) != len(layers) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
                raise ValueError(f"layers_to_transform must list at least two distinct block indices >= 0, "
                                 f"got {self.layers_to_transform!r}")
            self.layers_to_transform = sorted(layers)
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                raise ValueError(f"modules_to_save must be a list of module names, got the string "
                                 f"{self.modules_to_save!r}")
            if not self.freeze_base:
                raise ValueError("modules_to_save only applies with freeze_base=True (everything else is frozen)")
            self.modules_to_save = list(self.modules_to_save)


def fingerprint(model: nn.Module) -> str:
    """Hash of the model's state_dict keys and shapes: identifies a base architecture."""
    items = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


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
        _set_submodule(block, target, view)


def _layers(cfg: LorsConfig, stack_info) -> list[int]:
    """Indices of the blocks of ``stack_info`` that join the stack."""
    n = len(stack_info.layers)
    if cfg.layers_to_transform is None:
        return list(range(n))
    bad = [i for i in cfg.layers_to_transform if i >= n]
    if bad:
        raise ValueError(f"layers_to_transform {bad} out of range for '{stack_info.path}' with {n} blocks "
                         f"(allowed: 0..{n - 1})")
    return list(cfg.layers_to_transform)


def _ranks(cfg: LorsConfig, container: str, target: str, weights, layers: list[int], moments=None) -> list[int]:
    if cfg.epsilon is not None:
        total = LorsLinearStack.residual_ranks(weights, cfg.epsilon, moments)
        return [max(1, -(-r // cfg.groups)) for r in total]  # ceil(r / groups) per group
    ranks = []
    for i in layers:
        override = lookup(cfg.rank_pattern, f"{container}.{i}.{target}")
        ranks.append(cfg.rank if override is None else override)
    return ranks


def convert(model: nn.Module, config: Optional[LorsConfig] = None, calibration=None, forward=None,
            **kwargs) -> nn.Module:
    """Apply static LORS to every targeted weight path of every stack in ``model`` (in place).

    Returns ``model``. ``model.lors_conversion`` records what was converted (container,
    path, ranks, groups): :func:`lors.save` writes it and :func:`lors.load` replays it.
    Keyword arguments build a :class:`LorsConfig` when ``config`` is not given.

    ``calibration`` (needed by ``init="calibrated"``): an iterable of input batches, run once
    through the model (``forward(model, batch)``, default ``model(**batch)`` / ``model(*batch)``)
    to measure each targeted layer's input statistics, or those statistics already measured
    (``{path: E[x x^T]}`` from :func:`lors.calibration.input_moments`).
    """
    cfg = config if config is not None else LorsConfig(**kwargs)
    if (cfg.init == "calibrated") != (calibration is not None):
        raise ValueError("init='calibrated' needs calibration= (an iterable of input batches), and calibration= "
                         f"is only used with init='calibrated' (got init={cfg.init!r})")
    base_fingerprint = fingerprint(model)
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
    moments = {}
    if isinstance(calibration, dict):  # precomputed {path: E[x x^T]} from lors.calibration.input_moments
        moments = calibration
    elif calibration is not None:
        from .calibration import input_moments

        moments = input_moments(model, [f"{s.path}.{i}.{t}" for s, t in selected for i in _layers(cfg, s)],
                                calibration, forward)
    records = []
    for stack_info, target in selected:
        layers = _layers(cfg, stack_info)
        blocks = [stack_info.layers[i] for i in layers]
        layer_moments = [moments.get(f"{stack_info.path}.{i}.{target}") for i in layers] if moments else None
        if layer_moments is not None and any(m is None for m in layer_moments):
            layer_moments = None  # not every layer was seen: fit this stack to its weights
        pairs = [_weights(b, target) for b in blocks]
        weights = [w for w, _ in pairs]
        biases = None if pairs[0][1] is None else [b for _, b in pairs]
        ranks = _ranks(cfg, stack_info.path, target, weights, layers, layer_moments)
        out_f, in_f = weights[0].shape
        limit = min(out_f, in_f)
        for i, r in enumerate(ranks):
            if r * cfg.groups > limit:
                raise ValueError(f"rank {r} x groups {cfg.groups} is too large for '{stack_info.path}.{layers[i]}.{target}' "
                                 f"({out_f} x {in_f}); allowed: rank * groups <= {limit}")
        if cfg.init != "paper":
            stack = LorsLinearStack.from_weights(weights, biases, ranks, cfg.groups, input_moments=layer_moments)
        else:
            ref = weights[0]
            stack = LorsLinearStack(len(blocks), in_f, out_f, ranks, cfg.groups, bias=biases is not None,
                                    device=ref.device, dtype=ref.dtype)
        dense_count = sum(w.numel() for w in weights) + (0 if biases is None else sum(b.numel() for b in biases))
        if sum(p.numel() for p in stack.parameters()) > dense_count:
            warnings.warn(f"LORS stack for '{stack_info.path}.*.{target}' (ranks {ranks}) holds more parameters "
                          f"than the {len(blocks)} dense layers it replaces; lower rank/epsilon to save memory",
                          stacklevel=2)
        holder, holder_path = _holder(model, stack_info.path)
        key = target.replace(".", "__")
        holder[key] = stack
        for i, block in enumerate(blocks):
            _install(block, target, stack, i)
        records.append({"container": stack_info.path, "target": target, "stack": f"{holder_path}.{key}",
                        "ranks": ranks, "groups": per_layer(cfg.groups, len(blocks), "groups"),
                        "bias": biases is not None, "layers": layers})
    previous = getattr(model, "lors_conversion", None)
    model.lors_conversion = {
        "base_fingerprint": previous["base_fingerprint"] if previous else base_fingerprint,
        "config": dataclasses.asdict(cfg), "stacks": (previous["stacks"] if previous else []) + records,
        "lct": previous.get("lct", {}) if previous else {},
    }
    apply_freezing(model, model.lors_conversion["config"])
    install_save_pretrained(model)
    return model


def apply_freezing(model: nn.Module, config: dict) -> None:
    """Apply ``train_shared``/``freeze_base``/``modules_to_save`` of a :class:`LorsConfig` (as a dict)."""
    from .optim import lors_roles

    if config.get("freeze_base"):
        stack_params = {id(p) for m in model.modules() if isinstance(m, LorsLinearStack) for p in m.parameters()}
        keep = config.get("modules_to_save") or []
        saved = {id(p) for name, m in model.named_modules() if name and any(name == k or name.endswith("." + k)
                                                                          for k in keep) for p in m.parameters()}
        for p in model.parameters():
            if id(p) not in stack_params and id(p) not in saved:
                p.requires_grad_(False)
    if not config.get("train_shared", True):
        shared, _ = lors_roles(model)
        for p in model.parameters():
            if id(p) in shared:
                p.requires_grad_(False)


def rebuild(model: nn.Module, record: dict) -> None:
    """Recreate one recorded conversion on an unconverted model (structure only, paper init)."""
    container = model.get_submodule(record["container"])
    blocks = list(container.children())
    layers = record.get("layers") or list(range(len(record["ranks"])))
    if len(layers) != len(record["ranks"]) or max(layers) >= len(blocks):
        raise ValueError(f"'{record['container']}' has {len(blocks)} blocks, the checkpoint expects "
                         f"blocks {layers}")
    blocks = [blocks[i] for i in layers]
    weight, _ = _weights(blocks[0], record["target"])
    out_f, in_f = weight.shape
    stack = LorsLinearStack(len(blocks), in_f, out_f, record["ranks"], record["groups"], bias=record["bias"],
                            device=weight.device, dtype=weight.dtype)
    holder, _ = _holder(model, record["container"])
    holder[record["target"].replace(".", "__")] = stack
    for i, block in enumerate(blocks):
        _install(block, record["target"], stack, i)


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """A new model with every LORS stack and LowRankLinear folded back into dense weights.

    The input is not modified. Weights are formed in float64 and cast to their dtype,
    so outputs equal the converted model's to float tolerance.
    """
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, StackLayer):
            _set_submodule(model, name, make_dense(getattr(m, "original_cls", nn.Linear), *_dense(m.stack, m.index)))
        elif isinstance(m, mha_adapter.LorsMultiheadAttention):
            mha_adapter.detach(m, *_dense(m.lors_stack, m.lors_index))
        elif isinstance(m, LowRankLinear):
            W = (m.U.double() @ m.V.double()).to(m.U.dtype)
            _set_submodule(model, name, make_dense(getattr(m, "original_cls", nn.Linear), W, m.bias))
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if child_name.startswith("lors_") and isinstance(child, nn.ModuleDict):
                delattr(m, child_name)
    if hasattr(model, "lors_conversion"):
        del model.lors_conversion
    vars(model).pop("save_pretrained", None)  # back to the class's own save_pretrained
    return model


def _dense(stack: LorsLinearStack, i: int):
    B, A = stack.factors(i)
    W = (stack.shared_weight.double() + B.double() @ A.double()).to(stack.shared_weight.dtype)
    b = stack.layer_bias(i)
    return W, (None if b is None else b.detach().clone())


def tied_parameter_ids(model: nn.Module) -> set[int]:
    """ids of parameters reachable under more than one name (tied weights, e.g. GPT-2 ``lm_head`` and ``wte``)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, n in seen.items() if n > 1}


def lct(model: nn.Module, rank: Union[int, dict[str, int], None] = None, epsilon: Optional[float] = None,
        targets: str = r".*", skip_if_larger: bool = True, verbose: bool = False, calibration=None,
        forward=None) -> nn.Module:
    """Factorise the targeted linear layers (``nn.Linear``, GPT-2 ``Conv1D``) of ``model`` in place.

    Args:
        rank: one rank for every layer, or ``{module path: rank}`` (e.g. from :func:`lct_ranks`,
            to rebuild a factorised model before loading its checkpoint).
        epsilon: relative Frobenius tolerance; each layer gets the smallest rank meeting it.
        targets: regex matched (in full) against module paths such as ``blocks.3.mlp.fc1``.
        skip_if_larger: leave a layer dense when its chosen rank would store at least as many
            parameters as the dense weight (r (in + out) >= in out), so the count never grows.
        verbose: print each layer's chosen rank and the total parameter change.
        calibration: optional iterable of input batches (run once, ``forward(model, batch)``); the
            factors then fit each layer's outputs on these inputs instead of its weights, and
            ``epsilon`` bounds the relative output error (see :mod:`lors.nn.whiten`).

    Layers are never factorised when their weight is tied to another module (factorising
    would untie it) or when a single ``rank`` exceeds ``min(in, out)``; such layers stay
    dense, are listed in ``model.lors_conversion["lct_skipped"]`` with the reason, and one
    warning names them. Returns ``model``. Raises ``ValueError`` if no linear layer matches.
    """
    if (rank is None) == (epsilon is None):
        raise ValueError(f"give exactly one of rank= or epsilon= (got rank={rank!r}, epsilon={epsilon!r})")
    if epsilon is not None:
        epsilon_in_range(epsilon)
    base_fingerprint = fingerprint(model)
    pattern = re.compile(targets)
    paths = [name for name, m in model.named_modules() if is_linear(m, exact=True) and pattern.fullmatch(name)]
    if not paths:
        linears = [name for name, m in model.named_modules() if is_linear(m)]
        raise ValueError(f"targets={targets!r} matches no nn.Linear or Conv1D; the model's linear paths are: "
                         f"{', '.join(linears[:20]) or '(none)'}{' ...' if len(linears) > 20 else ''}")
    tied = tied_parameter_ids(model)
    moments = {}
    if isinstance(calibration, dict):
        moments = calibration
    elif calibration is not None:
        from .calibration import input_moments

        moments = input_moments(model, paths, calibration, forward)
    skipped: dict[str, str] = {}
    before = after = 0
    for path in paths:
        linear = model.get_submodule(path)
        weight, bias = dense_weight(linear)
        if isinstance(rank, dict):
            if path not in rank:
                continue
            layer_rank = rank[path]
        else:
            if id(linear.weight) in tied:
                skipped[path] = "weight is tied to another module"
                continue
            if rank is not None and rank > min(weight.shape):
                skipped[path] = f"rank {rank} > min{tuple(weight.shape)}"
                continue
            layer_rank = rank
        layer = LowRankLinear.from_weight(weight, bias, rank=layer_rank, epsilon=None if layer_rank else epsilon,
                                          input_moment=moments.get(path))
        if is_conv1d(linear):
            layer.original_cls = type(linear)  # merge() rebuilds a Conv1D
        if skip_if_larger and not isinstance(rank, dict) and layer.num_stored() >= layer.num_dense():
            if verbose:
                print(f"  {path}: rank {layer.rank} would not save parameters, kept dense")
            continue
        before, after = before + layer.num_dense(), after + layer.num_stored()
        if verbose:
            print(f"  {path}: rank {layer.rank} ({layer.num_stored():,} vs {layer.num_dense():,} parameters)")
        _set_submodule(model, path, layer)
    if verbose and before:
        print(f"lct: {before:,} -> {after:,} parameters in the factorised layers ({100 * (1 - after / before):.1f}% fewer)")
    if skipped:
        listed = "; ".join(f"{p} ({why})" for p, why in list(skipped.items())[:6])
        warnings.warn(f"lct kept {len(skipped)} targeted layer(s) dense: {listed}"
                      f"{' ...' if len(skipped) > 6 else ''}", stacklevel=2)
    conversion = getattr(model, "lors_conversion", None) or {"base_fingerprint": base_fingerprint, "config": None,
                                                             "stacks": [], "lct": {}}
    conversion["lct"] = lct_ranks(model)
    conversion["lct_skipped"] = {**conversion.get("lct_skipped", {}), **skipped}
    model.lors_conversion = conversion
    install_save_pretrained(model)
    return model


def lct_ranks(model: nn.Module) -> dict[str, int]:
    """``{module path: rank}`` of every ``LowRankLinear`` in ``model``."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, LowRankLinear)}
