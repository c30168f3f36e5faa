"""Argument validation shared by the layers in ``lors.nn``.

Every check raises ``ValueError`` whose message names the offending argument
and the allowed values, so a bad config fails once, clearly, at build time.
"""
from __future__ import annotations

from typing import Sequence, Union

IntOrList = Union[int, Sequence[int]]


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def per_layer(value: IntOrList, num_layers: int, name: str) -> list[int]:
    """Expand an int or a list of ints to one positive int per layer."""
    if isinstance(value, int) and not isinstance(value, bool):
        values = [value] * num_layers
    else:
        try:
            values = list(value)
        except TypeError:
            raise ValueError(f"{name} must be an int or a list of {num_layers} ints, got {value!r}") from None
        if len(values) != num_layers:
            raise ValueError(
                f"{name} has {len(values)} entries but num_layers is {num_layers}; "
                f"give one int or a list of exactly {num_layers} ints")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} entries must be positive integers, got {value!r}")
    return values


def block_indices(indices, depth: int, name: str) -> set[int]:
    """The blocks a list of indices names (negative: from the end), each checked against ``depth`` blocks."""
    if not isinstance(indices, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and -depth <= i < depth for i in indices):
        raise ValueError(f"{name} must be a list of block indices in [-{depth}, {depth - 1}] (negative: from the end; "
                         f"{depth} blocks), got {indices!r}")
    return {i % depth for i in indices}


def rank_fits(ranks: Sequence[int], rows: int, cols: int, name: str = "rank") -> None:
    limit = min(rows, cols)
    for r in ranks:
        if r > limit:
            raise ValueError(f"{name}={r} exceeds min(out_features, in_features)={limit}; allowed: 1..{limit}")


def factor_sizes(in_features: int, out_features: int, rank: int) -> tuple[int, int, int]:
    """Checked ``(in_features, out_features, rank)`` of a rank-r layer: positive, rank <= min(in, out)."""
    sizes = positive_int(in_features, "in_features"), positive_int(out_features, "out_features")
    rank_fits([positive_int(rank, "rank")], sizes[1], sizes[0])
    return sizes[0], sizes[1], rank


def epsilon_in_range(epsilon: float, name: str = "epsilon") -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 < float(epsilon) < 1.0:
        raise ValueError(f"{name} must be a float in the open interval (0, 1), got {epsilon!r}")
    return float(epsilon)


def last_dim(x, expected: int, what: str) -> None:
    if x.dim() == 0 or x.shape[-1] != expected:
        raise ValueError(
            f"input to {what} must have last dimension {expected} (shape (..., {expected})), "
            f"got shape {tuple(x.shape)}")
