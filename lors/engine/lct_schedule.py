"""The LCT schedule as Trainer callbacks: low-rank training of a model's linears (:mod:`lors.engine.callbacks`).

:class:`LctScheduleConfig` is the ``lct:`` section of a YAML file; :func:`lct_callbacks` turns it into
:class:`LctSchedule` (dense warm-up, then factorise, at once, gradually or when the stable ranks settle),
:class:`Reprojection` (re-balance / re-truncate the factors every N steps, AdamW moments reset or
transported), :class:`FrobeniusDecay` (``(lambda/2)||UV||_F^2`` in place of AdamW's decay on U and V)
and :class:`SpectralInit` (balanced truncated-SVD init of a model built factorised).
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..accounting import count_parameters
from ..apply.lct import lct, lct_ranks, rebuild, sync_ranks, targeted_paths
from ..errors import ConfigError, at_least, one_of, positive
from ..nn.checks import block_indices, epsilon_in_range
from ..nn.lowrank import frobenius_penalty, low_rank_layers, spectral_init
from ..nn.spectral import stable_rank
from .callbacks import Callback


MOMENTS = ("reset", "transport")
SWITCHES = ("epoch", "stable_rank")


def _epsilon(value: Optional[float], key: str) -> Optional[float]:
    if value is None:
        return None
    try:
        return epsilon_in_range(value)
    except ValueError:
        raise ConfigError(f"config key '{key}' must be a float in (0, 1), got {value!r}") from None


@dataclass
class LctScheduleConfig:
    """The LCT schedule (``lct:`` in a YAML file): train dense for ``warmup_epochs``, then factorise the
    targeted linears at ``epsilon`` (or ``rank``) and continue on the factors."""

    epsilon: Optional[float] = None
    rank: Optional[int] = None
    warmup_epochs: int = 0
    targets: Optional[str] = None   # regex of module paths to factorise (default: the model's block linears)
    ramp_epochs: int = 0            # >0: cut the dense weights' ranks gradually over this many epochs, then factorise
    reproject_every: int = 0        # every N steps re-balance U, V by SVD of U V (0: never)
    reproject_epsilon: Optional[float] = None  # ... and re-truncate each layer to this tolerance
    frobenius_decay: float = 0.0    # lambda of (lambda/2)||U V||_F^2 replacing weight decay on U, V
    reproject_moments: str = "reset"  # AdamW moments of re-balanced factors: "reset" or "transport" (same ranks)
    keep_dense: list[int] = field(default_factory=list)  # block indices (negative: from the end) whose linears stay dense (Pufferfish)
    # "epoch": factorise at warmup_epochs. "stable_rank" (Cuttlefish): after at least warmup_epochs dense epochs,
    # factorise once every target's stable rank ||W||_F^2/||W||_2^2 changed by less than stable_rank_tol (relative)
    # over the last epoch, each layer at rank ceil(stable_rank_scale * its stable rank); epsilon/rank unused.
    switch: str = "epoch"
    stable_rank_tol: float = 0.05
    stable_rank_scale: float = 1.0
    spectral_init: bool = False     # start the LCT layers of a factorised model (variant lct) from a truncated dense init

    def __post_init__(self):
        if self.epsilon is not None and self.rank is not None:
            raise ConfigError("set only one of lct.epsilon and lct.rank")
        _epsilon(self.epsilon, "lct.epsilon")
        _epsilon(self.reproject_epsilon, "lct.reproject_epsilon")
        positive(self.rank, "lct.rank")
        at_least(self.warmup_epochs, 0, "lct.warmup_epochs", "a whole number of epochs")
        at_least(self.ramp_epochs, 0, "lct.ramp_epochs", "0 (one-shot LCT) or a whole number of epochs")
        at_least(self.reproject_every, 0, "lct.reproject_every", "0 (never) or a whole number of steps")
        at_least(self.frobenius_decay, 0, "lct.frobenius_decay")
        if self.reproject_epsilon is not None and not self.reproject_every:
            raise ConfigError("config key 'lct.reproject_epsilon' needs lct.reproject_every > 0")
        one_of(self.reproject_moments, MOMENTS, "lct.reproject_moments")
        one_of(self.switch, SWITCHES, "lct.switch")
        positive(self.stable_rank_tol, "lct.stable_rank_tol")
        positive(self.stable_rank_scale, "lct.stable_rank_scale")
        if not isinstance(self.keep_dense, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.keep_dense):
            raise ConfigError(f"config key 'lct.keep_dense' must be a list of block indices (ints, negative from the "
                              f"end), got {self.keep_dense!r}")
        self.keep_dense = list(self.keep_dense)
        if self.switch == "stable_rank" and (self.epsilon is not None or self.rank is not None):
            raise ConfigError("lct.switch 'stable_rank' picks each layer's rank itself; leave lct.epsilon and lct.rank "
                              "unset (scale the ranks with lct.stable_rank_scale)")

    @property
    def scheduled(self) -> bool:
        """Whether the run factorises a dense model (``epsilon`` or ``rank`` is set, or the stable-rank switch)."""
        return self.epsilon is not None or self.rank is not None or self.switch == "stable_rank"


def ramp_rank(full: int, final: int, step: int, steps: int) -> int:
    """Rank of a layer after ramp step ``step`` of ``steps`` (``full`` at step 0, ``final`` from ``steps`` on):
    ``final + round((full - final) (1 - step / steps)^3)``, the cubic schedule of gradual pruning."""
    if step >= steps:
        return final
    return final + round((full - final) * (1.0 - step / steps) ** 3)


@torch.no_grad()
def project(model: nn.Module, final: dict[str, int], step: int, steps: int) -> dict[str, int]:
    """Project each dense layer in ``final`` onto its rank at ramp ``step`` (truncated SVD, in place)."""
    ranks = {}
    for path, r_final in final.items():
        weight = model.get_submodule(path).weight
        r = ramp_rank(min(weight.shape), r_final, step, steps)
        U, S, Vh = torch.linalg.svd(weight.double(), full_matrices=False)
        weight.copy_((U[:, :r] * S[:r]) @ Vh[:r])
        ranks[path] = r
    return ranks


def block_index(path: str) -> Optional[int]:
    """The block a module path belongs to: its first integer component (``blocks.3.attn.qkv`` -> 3)."""
    found = re.search(r"(?:^|\.)(\d+)(?:\.|$)", path)
    return None if found is None else int(found.group(1))


def target_paths(model: nn.Module, targets: str, keep_dense=()) -> list[str]:
    """Paths of the linears that ``targets`` (a regex) matches, minus those in the blocks ``keep_dense`` names
    (negative indices count from the last block the targets reach)."""
    paths = targeted_paths(model, targets)
    if not keep_dense:
        return paths
    blocks = {block_index(p) for p in paths} - {None}
    kept = block_indices(keep_dense, max(blocks) + 1 if blocks else 0, "lct.keep_dense")
    return [p for p in paths if block_index(p) not in kept]


def as_targets(paths: list[str]) -> str:
    """A regex matching exactly ``paths``."""
    return "|".join(re.escape(p) for p in paths)


def stable_rank_plan(model: nn.Module, paths: list[str], scale: float) -> dict[str, int]:
    """Per layer ``ceil(scale * stable rank)``; layers whose factors would not be smaller are left out (dense)."""
    plan = {}
    for p in paths:
        w = model.get_submodule(p).weight
        out_f, in_f = w.shape
        r = max(1, min(min(out_f, in_f), math.ceil(scale * stable_rank(w))))
        if r * (out_f + in_f) < out_f * in_f:
            plan[p] = r
    return plan


class LctSchedule(Callback):
    """Factorise the model's linears during training (the dense -> LCT schedule).

    One-shot (``ramp_epochs: 0``): at the start of epoch ``warmup_epochs`` (0-based) every
    targeted linear is cut by SVD to its final rank (from ``epsilon`` or ``rank``; a layer whose
    factors would not be smaller stays dense) and training continues on the factors.

    Gradual (``ramp_epochs: k > 0``): the final ranks are chosen the same way at the same epoch,
    but the layers stay dense for k more epochs; at the start of ramp epoch j = 1 .. k each weight is
    projected in place onto rank :func:`ramp_rank` (large cuts early, small ones late; the optimizer
    keeps its state, the shapes do not change), and after the k-th ramp epoch the layers are
    factorised at their final ranks. Choosing the ranks runs :func:`lors.lct` on a copy of the
    model, so it costs one model's memory for a moment.
    """

    def __init__(self, config: LctScheduleConfig, default_targets: str = r".*"):
        self.config = config
        self.targets = config.targets or default_targets
        self.done, self.final_ranks, self.stable_ranks = False, {}, {}

    def on_fit_start(self, trainer) -> None:
        if not self.done:  # a wrong lct.targets or lct.keep_dense fails now, not at the switch
            self.paths(trainer.model)
        if self.config.warmup_epochs >= trainer.config.epochs:
            trainer.warn(f"lct.warmup_epochs={self.config.warmup_epochs} >= train.epochs={trainer.config.epochs}: "
                         "the model is never factorised, so this LCT run trains a dense model")

    def paths(self, model: nn.Module) -> list[str]:
        return target_paths(model, self.targets, self.config.keep_dense)

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        """Stable-rank switch: track the targets' stable ranks, plan the cut once they stop changing."""
        c = self.config
        if c.switch != "stable_rank" or self.done or self.final_ranks:
            return
        paths = self.paths(trainer.model)
        ranks = {p: stable_rank(trainer.model.get_submodule(p).weight) for p in paths}
        prev, self.stable_ranks = self.stable_ranks, ranks
        if not prev or epoch + 1 < c.warmup_epochs:
            return
        change = max(abs(ranks[p] - prev[p]) / max(prev[p], 1e-12) for p in paths)
        trainer.info(f"LCT: stable ranks {min(ranks.values()):.1f}-{max(ranks.values()):.1f}, changed by at most "
                     f"{100 * change:.1f}% in epoch {epoch + 1} (switch below {100 * c.stable_rank_tol:g}%)")
        if change < c.stable_rank_tol:
            self.final_ranks = stable_rank_plan(trainer.model, paths, c.stable_rank_scale)
            trainer.info(f"LCT: factorising next epoch at ranks {sorted(set(self.final_ranks.values()))}")

    def on_epoch_start(self, trainer, epoch: int) -> None:
        c = self.config
        model = trainer.model
        if c.switch == "stable_rank":
            if not self.done and self.final_ranks:
                rebuild(model, self.final_ranks)
                self.done = True
                trainer.request_optimizer_rebuild()
                trainer.info(f"LCT: factorised {len(self.final_ranks)} layers at epoch {epoch + 1} (stable-rank "
                             f"switch), now {count_parameters(model):,} parameters")
            return
        ramp = epoch - c.warmup_epochs  # epochs into the LCT phase
        if self.done or ramp < 0:
            return
        targets = as_targets(self.paths(model)) if c.keep_dense else self.targets
        if ramp < c.ramp_epochs:  # gradual: project the dense weights, keep the optimizer
            if not self.final_ranks:  # chosen once, when the LCT phase starts
                trial = lct(copy.deepcopy(model), epsilon=c.epsilon, rank=c.rank, targets=targets)
                self.final_ranks = lct_ranks(trial)
            ranks = project(model, self.final_ranks, ramp + 1, c.ramp_epochs)
            what = f"projected (ramp epoch {ramp + 1}/{c.ramp_epochs})"
        else:
            if self.final_ranks:
                rebuild(model, self.final_ranks)
            else:
                lct(model, epsilon=c.epsilon, rank=c.rank, targets=targets)
            ranks = self.final_ranks = lct_ranks(model)
            self.done, what = True, "factorised"
            trainer.request_optimizer_rebuild()  # new parameters: fresh optimizer state
        trainer.info(f"LCT: {what} {len(ranks)} layers at epoch {epoch + 1}, ranks {sorted(set(ranks.values()))}, "
                     f"now {count_parameters(model):,} parameters")

    def on_fit_end(self, trainer) -> None:
        if self.config.switch == "stable_rank" and not self.done:
            trainer.warn("LCT: the stable ranks never settled within lct.stable_rank_tol; the model stayed dense")

    def state_dict(self) -> dict:
        return {"done": self.done, "final_ranks": self.final_ranks, "stable_ranks": self.stable_ranks}

    def load_state_dict(self, state: dict) -> None:
        self.done, self.final_ranks = state.get("done", False), dict(state.get("final_ranks", {}))
        self.stable_ranks = dict(state.get("stable_ranks", {}))


class Reprojection(Callback):
    """Every ``every`` steps, re-balance the LCT factors by SVD of ``U V`` (and re-truncate to ``epsilon``).

    Same ranks: the factors' Adam moments are dropped (they refer to the old basis). Changed ranks: the
    factors are new tensors, so the optimizer is rebuilt."""

    def __init__(self, every: int, epsilon: Optional[float] = None, moments: str = "reset"):
        if moments not in MOMENTS:
            raise ValueError(f"moments must be one of {MOMENTS}, got {moments!r}")
        self.every, self.epsilon, self.moments = every, epsilon, moments

    def on_step_end(self, trainer, step: int) -> None:
        layers = low_rank_layers(trainer.model)
        if not layers or step % self.every:
            return
        transport = self.moments == "transport"
        ranks = [m.rank for m in layers]
        old_U = [m.U.detach().double().clone() if transport else None for m in layers]  # only transport needs them
        if ranks != [m.reproject(self.epsilon) for m in layers]:
            sync_ranks(trainer.model)  # the checkpoint's record rebuilds the new shapes
            trainer.request_optimizer_rebuild()
            return
        for m, U0 in zip(layers, old_U):
            if transport:
                transport_moments(trainer.optimizer, m, U0)
            else:
                trainer.optimizer.state.pop(m.U, None)
                trainer.optimizer.state.pop(m.V, None)


@torch.no_grad()
def transport_moments(optimizer: torch.optim.Optimizer, layer, U_old: torch.Tensor) -> None:
    """Carry Adam's moments of ``layer.U``, ``layer.V`` over a re-balancing ``U' = U M``, ``V' = M^-1 V``.

    A gradient transforms as ``g_U' = g_U M^-T`` and ``g_V' = M^T g_V``, so the first moments (averages of
    gradients) are carried exactly; the second moments (averages of squared entries) are carried by the
    squared maps ``v_U (M^-T)^2``, ``(M^T)^2 v_V`` (exact for a diagonal M, an approximation otherwise).
    """
    U_new = layer.U.detach().double()
    M = torch.linalg.lstsq(U_old, U_new).solution  # (r, r): U' = U M
    M_inv = torch.linalg.inv(M)
    for p, left, right in ((layer.U, None, M_inv.T), (layer.V, M.T, None)):
        state = optimizer.state.get(p)
        if not state:
            continue
        for key, square in (("exp_avg", False), ("exp_avg_sq", True)):
            if key not in state:
                continue
            t = state[key].double()
            L = None if left is None else (left.square() if square else left)
            R = None if right is None else (right.square() if square else right)
            t = L @ t if L is not None else t @ R
            state[key].copy_(t.clamp_min(0) if square else t)


class FrobeniusDecay(Callback):
    """``(lambda/2) ||U V||_F^2`` on every LCT layer, replacing AdamW's decay of U and V."""

    def __init__(self, strength: float):
        self.strength = strength

    def extra_loss(self, trainer) -> torch.Tensor:
        return 0.5 * self.strength * frobenius_penalty(trainer.model)

    def no_decay(self, model: nn.Module) -> set[int]:
        return {id(p) for m in low_rank_layers(model) for p in (m.U, m.V)}


class SpectralInit(Callback):
    """Before the first step, re-draw every LCT layer's factors as the balanced rank-r truncation of a dense
    Kaiming init (:func:`lors.nn.lowrank.spectral_init`); a resumed run keeps its trained factors."""

    def on_fit_start(self, trainer) -> None:
        if trainer.step == 0:
            n = spectral_init(trainer.model)
            if n == 0:
                trainer.warn("lct.spectral_init is true but the model has no LowRankLinear layers at the start "
                             "(it applies to model.variant 'lct'); it has no effect")
            else:
                trainer.info(f"LCT: spectral init of {n} factorised layers")


def lct_callbacks(config: LctScheduleConfig, default_targets: str) -> list[Callback]:
    """The callbacks that an ``lct:`` section asks for (none when it is empty)."""
    out: list[Callback] = [LctSchedule(config, default_targets)] if config.scheduled else []
    if config.reproject_every:
        out.append(Reprojection(config.reproject_every, config.reproject_epsilon, config.reproject_moments))
    if config.frobenius_decay > 0:
        out.append(FrobeniusDecay(config.frobenius_decay))
    if config.spectral_init:
        out.append(SpectralInit())
    return out
