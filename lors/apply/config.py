"""What a conversion does: :class:`LorsConfig` (static LORS, :func:`lors.convert`) and :class:`LctConfig`
(factorised linears, :func:`lors.lct`). Both check their fields on construction and round-trip through
plain dicts (``to_dict`` / ``from_dict``), which is how conversion records store them.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from ..nn.checks import epsilon_in_range, positive_int

INITS = ("pretrained", "calibrated", "paper")
SHARINGS = ("residual", "basis")


class _DictMixin:
    """``to_dict`` / ``from_dict`` for the config dataclasses (unknown keys are an error)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} needs a dict, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; allowed: {', '.join(names)}")
        return cls(**data)


@dataclass
class LorsConfig(_DictMixin):
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
            calibration inputs: give ``calibration=`` to :func:`convert`; see :mod:`lors.nn.spectral`)
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
        sharing: ``"residual"`` (LORS: ``W_i = W_shared + B_i A_i``) or ``"basis"`` (Basis Sharing:
            ``W_i = U A_i`` with one output basis ``U`` of rank ``rank`` per stack, see :mod:`lors.nn.basis`).
        group_size: share within groups of this many adjacent blocks (one stack per group, the last may be
            smaller); ``None``: one stack over all blocks.
        fit_iterations: with ``init="calibrated"``, alternations between the shared weight and the residuals
            (each step lowers the whitened output error; 1: shared weight first, then residuals).
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
    sharing: str = "residual"
    group_size: Optional[int] = None
    fit_iterations: int = 2

    def __post_init__(self):
        positive_int(self.rank, "rank")
        positive_int(self.fit_iterations, "fit_iterations")
        if self.sharing not in SHARINGS:
            raise ValueError(f"sharing must be one of {SHARINGS}, got {self.sharing!r}")
        if self.sharing == "basis" and (self.groups != 1 or self.epsilon is not None):
            raise ValueError("sharing='basis' takes one basis rank (rank= or rank_pattern=): groups must be 1 "
                             "and epsilon None")
        if self.group_size is not None and (positive_int(self.group_size, "group_size") < 2):
            raise ValueError(f"group_size must be >= 2 blocks (or None for one stack), got {self.group_size}")
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


@dataclass
class LctConfig(_DictMixin):
    """How :func:`lors.lct` factorises linear layers into :class:`~lors.LowRankLinear`.

    Attributes:
        rank: one rank for every targeted layer (give exactly one of ``rank``, ``epsilon`` and ``fraction``).
        fraction: each targeted matrix keeps this fraction of its parameters, in (0, 1):
            rank ``floor(fraction * in * out / (in + out))`` (at least 1), so one setting fits every shape.
        epsilon: relative Frobenius tolerance in (0, 1); each layer gets the smallest rank meeting it
            (with calibration: the relative output error).
        targets: regex matched (in full) against module paths such as ``blocks.3.mlp.fc1``.
        skip_if_larger: leave a layer dense when its factors would store at least as many
            parameters as the dense weight (``r (in + out) >= in out``), so the count never grows.
    """

    rank: Optional[int] = None
    epsilon: Optional[float] = None
    targets: str = r".*"
    skip_if_larger: bool = True
    fraction: Optional[float] = None

    def __post_init__(self):
        if sum(x is not None for x in (self.rank, self.epsilon, self.fraction)) != 1:
            raise ValueError(f"give exactly one of rank=, epsilon= or fraction= (got rank={self.rank!r}, "
                             f"epsilon={self.epsilon!r}, fraction={self.fraction!r})")
        if self.rank is not None:
            positive_int(self.rank, "rank")
        elif self.epsilon is not None:
            epsilon_in_range(self.epsilon)
        elif not (isinstance(self.fraction, (int, float)) and 0 < self.fraction < 1):
            raise ValueError(f"fraction must be in (0, 1) (the share of each matrix's parameters kept), "
                             f"got {self.fraction!r}")
        if not isinstance(self.targets, str):
            raise ValueError(f"targets must be a regex string, got {self.targets!r}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"targets={self.targets!r} is not a valid regex ({e})") from None
