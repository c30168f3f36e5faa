"""Apply LCT to any PyTorch model: replace targeted ``nn.Linear`` layers by ``LowRankLinear``.

``lct(model, rank=..., epsilon=..., targets=...)`` factorises, in place, every
``nn.Linear`` whose module path matches ``targets`` (a regex, full match) by
truncated SVD. ``lct_ranks(model)`` lists the ranks that were chosen.
"""
from __future__ import annotations

import re
from typing import Optional, Union

from torch import nn

from .nn.checks import epsilon_in_range
from .nn.lowrank import LowRankLinear


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def lct(model: nn.Module, rank: Union[int, dict[str, int], None] = None, epsilon: Optional[float] = None,
        targets: str = r".*", skip_if_larger: bool = True) -> nn.Module:
    """Factorise the targeted ``nn.Linear`` layers of ``model`` in place; returns ``model``.

    Args:
        rank: one rank for every layer, or ``{module path: rank}`` (e.g. from :func:`lct_ranks`,
            to rebuild a factorised model before loading its checkpoint).
        epsilon: relative Frobenius tolerance; each layer gets the smallest rank meeting it.
        targets: regex matched (in full) against module paths such as ``blocks.3.mlp.fc1``.
        skip_if_larger: leave a layer dense when its chosen rank would store at least as many
            parameters as the dense weight (r (in + out) >= in out); such layers are not in
            :func:`lct_ranks`.

    Exactly one of ``rank``/``epsilon``. Raises ``ValueError`` if no Linear matches.
    """
    if (rank is None) == (epsilon is None):
        raise ValueError(f"give exactly one of rank= or epsilon= (got rank={rank!r}, epsilon={epsilon!r})")
    if epsilon is not None:
        epsilon_in_range(epsilon)
    pattern = re.compile(targets)
    paths = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and pattern.fullmatch(name)]
    if not paths:
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"targets={targets!r} matches no nn.Linear; the model's Linear paths are: "
                         f"{', '.join(linears[:20]) or '(none)'}{' ...' if len(linears) > 20 else ''}")
    for path in paths:
        linear = model.get_submodule(path)
        if isinstance(rank, dict):
            if path not in rank:
                raise ValueError(f"rank dict has no entry for target '{path}'")
            layer = LowRankLinear.from_dense(linear, rank=rank[path])
        else:
            layer = LowRankLinear.from_dense(linear, rank=rank, epsilon=epsilon)
        if skip_if_larger and not isinstance(rank, dict) and layer.num_stored() >= layer.num_dense():
            continue
        _set_submodule(model, path, layer)
    return model


def lct_ranks(model: nn.Module) -> dict[str, int]:
    """``{module path: rank}`` of every ``LowRankLinear`` in ``model``."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, LowRankLinear)}
