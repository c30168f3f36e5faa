"""Optimizer parameter groups that know which tensors LORS shares across layers.

A shared weight is used by every layer of its stack: its gradient is the sum of
N layers' gradients and one optimizer step moves all N layers at once, in the
same direction. With Adam-type optimizers the per-coordinate step is about
``lr`` whatever the gradient's size, so a shared weight changes the network
roughly ``sqrt(N)`` times more per step than N private weights moving in
independent directions. :func:`param_groups` therefore gives shared tensors a
smaller learning rate; the default rule ``1/sqrt(N)`` is the one our
experiments support (RESULTS.md, "Shared-weight learning rate").

The groups work with any ``torch.optim`` optimizer and any training loop::

    opt = torch.optim.AdamW(lors.param_groups(model, lr=1e-3, weight_decay=0.05))

Each group carries ``lr_scale``; a schedule that sets ``group["lr"] = lr * group["lr_scale"]``
(as our engine does), or any ``torch.optim.lr_scheduler`` (they scale each group's
initial lr), keeps the ratio between shared, private and other parameters.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Union

import torch
from torch import nn

from .nn.balance import GradBalance
from .nn.cola import CoLALinear
from .nn.lowrank import LowRankLinear
from .nn.stack import shared_stacks

NO_DECAY_NAMES = ("bias",)
SHARED_LR_RULES: dict[str, Callable[[int], float]] = {
    "1/sqrt(N)": lambda n: 1.0 / math.sqrt(n),
    "1/N": lambda n: 1.0 / n,
    "1": lambda n: 1.0,
}
ScaleRule = Union[float, str, Callable[[int], float]]
FACTOR_LR_RULES = ("1", "fan_in", "rank")


def factor_scales(model: nn.Module, rule: str = "1") -> dict[int, float]:
    """Per-tensor learning-rate factors of the low-rank factors in ``model`` under ``rule``.

    The factors are ``U``/``V`` of every :class:`~lors.LowRankLinear` and ``B``/``A`` of every
    :class:`~lors.nn.cola.CoLALinear` (output factor / input factor, rank r, layer fan-in n):

    * ``"1"``: every factor at the base rate;
    * ``"fan_in"``: each factor at ``sqrt(n / its fan-in)``: the input factor (fan-in n) at 1, the output
      factor (fan-in r) at ``sqrt(n / r)`` (muP gives Adam a rate proportional to 1/fan-in; the square root
      keeps the largest factor moderate);
    * ``"rank"``: both factors of a layer at ``sqrt(r_min / r)``, r_min the smallest rank in the model:
      a layer of higher rank sums more rank-one updates per step, so it gets a smaller rate (1 for all when
      every layer has the same rank).

    Returns ``{id(tensor): factor}``.
    """
    if rule not in FACTOR_LR_RULES:
        raise ValueError(f"factor_lr_rule must be one of {FACTOR_LR_RULES}, got {rule!r}")
    pairs = [(m.U, m.V, m) for m in model.modules() if isinstance(m, LowRankLinear)]
    pairs += [(m.B, m.A, m) for m in model.modules() if isinstance(m, CoLALinear)]
    r_min = min((m.rank for *_, m in pairs), default=1)
    scales = {}
    for out_factor, in_factor, m in pairs:
        if rule == "fan_in":
            out_scale, in_scale = math.sqrt(m.in_features / m.rank), 1.0
        elif rule == "rank":
            out_scale = in_scale = math.sqrt(r_min / m.rank)
        else:
            out_scale = in_scale = 1.0
        scales[id(out_factor)], scales[id(in_factor)] = out_scale, in_scale
    return scales


def shared_lr_rule(rule: ScaleRule) -> Callable[[int], float]:
    """Turn ``rule`` (a number, a name in ``SHARED_LR_RULES`` or a function of N) into a function of N."""
    if callable(rule):
        return rule
    if isinstance(rule, str):
        if rule not in SHARED_LR_RULES:
            raise ValueError(f"shared_lr_scale must be a positive number or one of {tuple(SHARED_LR_RULES)}, "
                             f"got {rule!r}")
        return SHARED_LR_RULES[rule]
    if isinstance(rule, (int, float)) and not isinstance(rule, bool) and rule > 0:
        return lambda n: float(rule)
    raise ValueError(f"shared_lr_scale must be a positive number or one of {tuple(SHARED_LR_RULES)}, got {rule!r}")


def lors_roles(model: nn.Module) -> tuple[dict[int, int], set[int]]:
    """Find the LORS tensors of ``model``.

    Returns ``({id: N}, {ids})``: each shared tensor with the number of layers N that
    use it, and the private residual factors, as every :class:`~lors.nn.stack.SharedStack`
    inside the model declares them (static and adaptive stacks, including those made by
    :func:`lors.convert`).
    """
    shared, private = {}, set()
    for _, m in shared_stacks(model):
        for p in m.shared_parameters():
            shared[id(p)] = max(shared.get(id(p), 0), int(m.num_layers))
        private.update(id(p) for p in m.private_parameters())
    return shared, private - set(shared)


def declared_no_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters that modules exempt from weight decay through ``no_weight_decay()``
    (as timm models do: a set of parameter names relative to the module that declares them)."""
    names = set()
    for prefix, m in model.named_modules():
        declare = getattr(m, "no_weight_decay", None)
        if callable(declare):
            names.update(f"{prefix}.{n}" if prefix else n for n in declare())
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, shared_lr_scale: ScaleRule = "1/sqrt(N)",
                 private_lr_scale: float = 1.0, no_decay_names: Iterable[str] = NO_DECAY_NAMES,
                 exempt: Iterable[int] = (), factor_lr_scale: float = 1.0, factor_lr_rule: str = "1") -> list[dict]:
    """Parameter groups for ``torch.optim`` optimizers, with shared LORS tensors grouped apart.

    Args:
        model: any module; LORS stacks anywhere inside it are found (see :func:`lors_roles`).
        lr: base learning rate.
        weight_decay: decay for matrices; 1-D tensors (norms, biases), names ending in one of
            ``no_decay_names``, the names a module lists in its ``no_weight_decay()`` (timm's convention,
            e.g. the ViT's ``cls_token`` and ``pos_embed``) and ids in ``exempt``
            get none.
        shared_lr_scale: learning-rate factor of a shared tensor: a number, a rule of the number
            N of layers that share it (``"1/sqrt(N)"`` (default), ``"1/N"``, ``"1"``) or a function
            ``N -> float``.
        private_lr_scale: factor for the private low-rank residual factors.
        factor_lr_scale: factor for the low-rank factors of LCT layers (``U``/``V`` of
            :class:`~lors.LowRankLinear`, ``B``/``A`` of :class:`~lors.nn.cola.CoLALinear`).
        factor_lr_rule: per-layer rule multiplied into ``factor_lr_scale``: ``"1"`` (default), ``"fan_in"``
            or ``"rank"`` (see :func:`factor_scales`).

    Returns a list of dicts with ``params``, ``lr`` (= base lr x ``lr_scale``), ``lr_scale``,
    ``weight_decay`` and ``name`` (``"shared/N=12"``, ``"private"``, ``"factor"`` (``"factor/x1.63"`` where
    a rule gives a factor its own rate) or ``"other"``, plus ``"/no_decay"``). Every trainable tensor appears in exactly one group; frozen ones in none.
    """
    rule = shared_lr_rule(shared_lr_scale)
    if not (isinstance(private_lr_scale, (int, float)) and private_lr_scale > 0):
        raise ValueError(f"private_lr_scale must be a positive number, got {private_lr_scale!r}")
    if not (isinstance(factor_lr_scale, (int, float)) and factor_lr_scale > 0):
        raise ValueError(f"factor_lr_scale must be a positive number, got {factor_lr_scale!r}")
    shared, private = lors_roles(model)
    factors = factor_scales(model, factor_lr_rule)
    no_decay_names, exempt, declared = tuple(no_decay_names), set(exempt), declared_no_decay(model)
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in shared:
            role, scale = f"shared/N={shared[id(p)]}", rule(shared[id(p)])
        elif id(p) in private:
            role, scale = "private", float(private_lr_scale)
        elif id(p) in factors:
            scale = float(factor_lr_scale) * factors[id(p)]
            role = "factor" if factors[id(p)] == 1.0 else f"factor/x{factors[id(p)]:.4g}"
        else:
            role, scale = "other", 1.0
        decays = not (p.ndim <= 1 or name.rsplit(".", 1)[-1] in no_decay_names or name in declared
                      or id(p) in exempt)
        key = role if decays else f"{role}/no_decay"
        group = groups.setdefault(key, {"params": [], "lr": lr * scale, "lr_scale": scale,
                                        "weight_decay": weight_decay if decays else 0.0, "name": key})
        group["params"].append(p)
    return list(groups.values())


def balance_shared_gradients(model: nn.Module, enabled: bool = True, beta: float = 0.99) -> int:
    """Switch per-layer gradient balancing of the shared LORS tensors on (or off) in every stack of ``model``.

    With it on, each layer's contribution to a shared tensor's gradient is rescaled to the running
    mean size over the layers before they are summed (:class:`~lors.nn.balance.GradBalance`), so a
    layer with large gradients (an early detector stage) no longer steers the shared tensor alone.
    The forward pass, the parameters and ``state_dict`` are unchanged; the running norms are not
    saved (they restart when training resumes). Works with any optimizer and training loop.
    Returns the number of stacks switched.
    """
    stacks = [m for _, m in shared_stacks(model)]
    for m in stacks:
        m.grad_balance = GradBalance(int(m.num_layers), beta) if enabled else None
    return len(stacks)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * group["lr_scale"]`` (1 where a group has no scale)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
