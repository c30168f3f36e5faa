"""Parameter accounting: exact counts of built modules and closed forms from dimensions.

``count_parameters(module)`` counts unique parameters (a tensor shared by several
layers is counted once). ``parameter_table``/``format_table`` break a model down
per child module into total, trainable, shared and private parameters.
The ``*_params`` functions give closed-form counts from dimensions alone, so
the reduction can be seen before anything is built.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from torch import nn

from .nn.checks import IntOrList, per_layer
from .nn.stack import shared_stacks


def _unique_parameters(module: nn.Module):
    seen = set()
    for p in module.parameters():  # parameters() already skips repeats; keep the id check explicit
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of unique parameters in ``module`` (shared tensors counted once)."""
    return sum(p.numel() for p in _unique_parameters(module) if p.requires_grad or not trainable_only)


def shared_parameter_ids(module: nn.Module) -> set[int]:
    """ids of the parameters that LORS stacks (:class:`~lors.nn.stack.SharedStack`) share across their layers."""
    return {id(p) for _, m in shared_stacks(module) for p in m.shared_parameters()}


@dataclass
class Row:
    name: str
    total: int
    trainable: int
    shared: int

    @property
    def private(self) -> int:
        return self.total - self.shared


def parameter_table(model: nn.Module, depth: int = 1) -> list[Row]:
    """One row per module at ``depth`` (1 = direct children) plus a final ``total`` row.

    Parameters owned directly by a shallower module are reported under that module's
    name. Each unique tensor is attributed to the first path that reaches it.
    """
    shared = shared_parameter_ids(model)
    rows: dict[str, Row] = {}
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        parts = name.split(".")[:-1]
        key = ".".join(parts[:depth]) or "(own)"
        row = rows.setdefault(key, Row(key, 0, 0, 0))
        row.total += p.numel()
        row.trainable += p.numel() if p.requires_grad else 0
        row.shared += p.numel() if id(p) in shared else 0
    out = list(rows.values())
    out.append(Row("total", sum(r.total for r in out), sum(r.trainable for r in out), sum(r.shared for r in out)))
    return out


def format_table(rows: Sequence[Row]) -> str:
    """Render ``parameter_table`` rows as a fixed-width text table."""
    header = ("module", "total", "trainable", "shared", "private")
    body = [(r.name, f"{r.total:,}", f"{r.trainable:,}", f"{r.shared:,}", f"{r.private:,}") for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line(header), sep] + [line(b) for b in body[:-1]] + [sep, line(body[-1])])


def summary(model: nn.Module) -> str:
    """One line: trainable / total parameters and how many are shared across layers."""
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    shared_ids = shared_parameter_ids(model)
    shared = sum(p.numel() for p in _unique_parameters(model) if id(p) in shared_ids)
    return (f"trainable params: {trainable:,} || all params: {total:,} || trainable%: "
            f"{100 * trainable / max(1, total):.4f} || shared across layers: {shared:,}")


def print_trainable_parameters(model: nn.Module) -> None:
    """Print :func:`summary` (the one-liner PEFT users know)."""
    print(summary(model))


def report(model: nn.Module, depth: int = 1) -> str:
    """Printable parameter report: the one-line summary and the per-module table."""
    return summary(model) + "\n" + format_table(parameter_table(model, depth))


# -- closed forms ---------------------------------------------------------------

def dense_stack_params(num_layers: int, in_features: int, out_features: int, bias: bool = True) -> int:
    """N independent Linear layers: N (d_in d_out + d_out)."""
    return num_layers * (in_features * out_features + (out_features if bias else 0))


def static_lors_params(num_layers: int, in_features: int, out_features: int, rank: IntOrList,
                       groups: IntOrList = 1, bias: bool = True) -> int:
    """Static LORS stack: d_out d_in + sum_i K_i r_i (d_in + d_out) (+ N d_out)."""
    ranks = per_layer(rank, num_layers, "rank")
    groups = per_layer(groups, num_layers, "groups")
    private = sum(k * r * (in_features + out_features) for r, k in zip(ranks, groups))
    return in_features * out_features + private + (num_layers * out_features if bias else 0)


def generator_stack_params(num_layers: int, query_dim: int, rows: int, cols: int, param_groups: int = 1,
                           bias: bool = True) -> int:
    """N dense generators d_q -> P rows cols: N (d_q + 1) P rows cols."""
    return num_layers * (query_dim + (1 if bias else 0)) * param_groups * rows * cols


def adaptive_lors_params(num_layers: int, query_dim: int, rows: int, cols: int, rank: IntOrList,
                         groups: IntOrList = 1, param_groups: int = 1, bias: bool = True,
                         layer_bias: bool = False) -> int:
    """Adaptive LORS: shared generator + per layer (private generator of K_i r_i^2 cores + L, R factors,
    and with ``layer_bias`` a full P*rows*cols bias)."""
    ranks = per_layer(rank, num_layers, "rank")
    groups = per_layer(groups, num_layers, "groups")
    q = query_dim + (1 if bias else 0)
    P = param_groups
    shared = q * P * rows * cols
    private = sum(q * P * k * r * r + P * k * r * (rows + cols) for r, k in zip(ranks, groups))
    return shared + private + (num_layers * P * rows * cols if layer_bias else 0)


def reduction(before: int, after: int) -> float:
    """Percentage of parameters removed going from ``before`` to ``after``."""
    return 100.0 * (1.0 - after / before)


def lct_block_estimate(layers: Sequence[tuple[int, int, bool]], rank: int | None = None,
                       epsilon: float | None = None) -> tuple[int, int]:
    """(dense, factorised) parameters of linear layers ``(in, out, bias)`` after LCT at ``rank`` or ``epsilon``.

    With ``epsilon`` the ranks depend on the trained spectra, so this is a bound: a matrix of rank
    n never needs more than ``ceil(n (1 - epsilon^2))`` singular values for a relative error of
    ``epsilon`` (the discarded tail holds at most its share of the energy). Layers whose factors
    would not be smaller stay dense, as in :func:`lors.lct`.
    """
    dense = factored = 0
    for d_in, d_out, bias in layers:
        r = rank if rank is not None else math.ceil(min(d_in, d_out) * (1 - epsilon ** 2))
        full, low = d_in * d_out + bias * d_out, max(1, r) * (d_in + d_out) + bias * d_out
        dense, factored = dense + full, factored + min(full, low)
    return dense, factored
