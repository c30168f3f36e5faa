"""The LCT schedule inside a training run: when the block linears are factorised, and how gradually.

One-shot (``train.lct_ramp_epochs: 0``): after ``lct_warmup_epochs`` dense epochs every
targeted linear is cut by SVD to its final rank (from ``lct_epsilon`` or ``lct_rank``) and
training continues on the factors.

Gradual (``lct_ramp_epochs: k > 0``): the final ranks are chosen the same way at the same
epoch, but the layers stay dense for k more epochs; at the start of ramp epoch j = 1 .. k each
weight is projected (truncated SVD, in place) onto rank

    r_j = r_final + round((r_full - r_final) * (1 - j / k) ** 3)

(the cubic schedule of gradual pruning: large cuts early, small ones near the end), and after
the k-th ramp epoch the layers are factorised at their final ranks. Each cut keeps the best
approximation of the weight as trained so far, the optimizer keeps its state (the shapes do not
change), and the network has epochs to recover between cuts instead of losing most of each
weight's energy at once.
"""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

from ..convert import lct, lct_ranks


def ramp_rank(full: int, final: int, step: int, steps: int) -> int:
    """Rank of a layer after ramp step ``step`` of ``steps`` (``full`` at step 0, ``final`` from ``steps`` on)."""
    if step >= steps:
        return final
    return final + round((full - final) * (1.0 - step / steps) ** 3)


def final_ranks(model: nn.Module, epsilon: float | None, rank: int | None, targets: str) -> dict[str, int]:
    """``{path: rank}`` that one-shot LCT at ``epsilon`` (or ``rank``) would give ``model`` now (model unchanged).

    Layers that would not shrink are left out, as :func:`lors.lct` leaves them dense. Runs :func:`lors.lct`
    on a copy of the model, so it costs one model's memory for a moment; only the gradual schedule needs it.
    """
    trial = copy.deepcopy(model)
    lct(trial, epsilon=epsilon, rank=rank, targets=targets)
    return lct_ranks(trial)


def factorise(model: nn.Module, final: dict[str, int], epsilon: float | None, rank: int | None,
              targets: str) -> dict[str, int]:
    """Factorise ``model`` in place: at the planned ``final`` ranks if there are any (after a ramp), else at
    ``epsilon`` (or ``rank``) directly. Returns ``{path: rank}`` of the factorised layers."""
    if final:
        lct(model, rank=final, targets="|".join(map(re.escape, final)))
    else:
        lct(model, epsilon=epsilon, rank=rank, targets=targets)
    return lct_ranks(model)


@torch.no_grad()
def project(model: nn.Module, final: dict[str, int], step: int, steps: int) -> dict[str, int]:
    """Project each dense layer in ``final`` onto its rank at ramp ``step`` (in place); returns the ranks."""
    ranks = {}
    for path, r_final in final.items():
        weight = model.get_submodule(path).weight
        r = ramp_rank(min(weight.shape), r_final, step, steps)
        U, S, Vh = torch.linalg.svd(weight.double(), full_matrices=False)
        weight.copy_((U[:, :r] * S[:r]) @ Vh[:r])
        ranks[path] = r
    return ranks
