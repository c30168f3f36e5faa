"""Find stacks of identical blocks in any ``nn.Module`` and the linear weights they share in shape.

A *stack* is an ``nn.ModuleList`` or ``nn.Sequential`` with at least ``min_layers``
children of identical structure: the same module types at the same paths and the
same parameter names and shapes. Stacks inside a stack that was already found
are not reported (the outermost wins). Within a stack, the candidate weights are
every ``nn.Linear`` (or Hugging Face GPT-2 ``Conv1D``) path and every
``nn.MultiheadAttention`` fused in-projection (reported as ``<attention path>.in_proj``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from torch import nn

from .linears import is_linear

IN_PROJ = ".in_proj"  # suffix naming the fused q/k/v projection of an nn.MultiheadAttention


@dataclass
class Stack:
    path: str                 # module path of the container, e.g. "encoder.layer"
    container: nn.Module      # the ModuleList / Sequential
    targets: list[str]        # relative paths of candidate weights in every element

    @property
    def layers(self) -> list[nn.Module]:
        return list(self.container.children())


def structure(module: nn.Module) -> tuple:
    """Module types per path plus parameter shapes per name: equal for identical blocks."""
    return (tuple((n, type(m).__name__) for n, m in module.named_modules()),
            tuple((n, tuple(p.shape)) for n, p in module.named_parameters()))


def candidate_targets(block: nn.Module) -> list[str]:
    """Relative paths of the Linear/Conv1D layers and MultiheadAttention in-projections of ``block``."""
    out = []
    for name, m in block.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            if not m._qkv_same_embed_dim or "in_proj_weight" not in m._parameters:
                continue  # separate q/k/v weights (not supported), or already converted
            out.append(name + IN_PROJ)
        elif is_linear(m):
            out.append(name)
    return out


def find_stacks(model: nn.Module, min_layers: int = 2) -> tuple[list[Stack], list[str]]:
    """(stacks found, container paths examined)."""
    found: list[Stack] = []
    examined: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(s.path + ".") for s in found):
            continue
        if not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        examined.append(name or "(model)")
        children = list(m.children())
        if len(children) < min_layers or len({structure(c) for c in children}) != 1:
            continue
        targets = candidate_targets(children[0])
        if targets:
            found.append(Stack(name, m, targets))
    return found, examined


def matches(pattern: Union[str, Sequence[str], None], name: str) -> bool:
    """PEFT-style matching: a list of names matches ``name`` or any ``*.name`` suffix;
    a single string is a regex that must match the whole name; ``None`` matches everything."""
    if pattern is None:
        return True
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def lookup(rank_pattern: dict[str, int], full_name: str) -> Optional[int]:
    """The override for ``full_name`` (e.g. ``encoder.layer.3.attention.self.query``): the first key
    that equals it or is a dotted suffix of it (so ``"attention.self.query"`` is a per-path and
    ``"layer.3.attention.self.query"`` a per-layer override)."""
    for key, value in rank_pattern.items():
        if full_name == key or full_name.endswith("." + key):
            return value
    return None
