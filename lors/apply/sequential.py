"""Sequential (truncation-aware) fitting: compress block by block on the inputs the compressed network makes.

One-shot fitting measures every layer's input moments on the original network, so layer ``i`` is fitted to
inputs it will no longer see once the layers below it are compressed. :func:`sequential_refit` (as GPTQ,
SVD-LLM and ASVD do) walks a stack of blocks in order, keeping two streams of hidden states for the same
calibration batches: ``x_o`` through the original blocks (``teacher``) and ``x_c`` through the compressed
ones (``model``). Inside a block it goes stage by stage (linears that read the same tensor, e.g. q/k/v, then
o, then gate/up, then down), so that each stage sees the inputs made by the already-refitted stages before it.

For each targeted linear with original weight ``W`` it measures ``C = E[x_c x_c^T]`` and ``X = E[x_o x_c^T]``
and refits the layer's private part at its current rank to the target

    T = W                                  (correct=False: fit the layer itself, on its new inputs)
    T = W + W (X - C) (C + lambda I)^{-1}   (correct=True: the least-squares map from the new inputs to the
                                            original layer's outputs, ridge-shrunk toward W)

in the whitened space of ``C`` (see :mod:`lors.nn.spectral`). When nothing below is truncated ``x_c = x_o``,
``X = C`` and ``T = W`` exactly, so sequential fitting then equals one-shot fitting. What is refitted:
an :class:`~lors.LowRankLinear` is re-factorised; a LORS stack keeps its shared weight and refits layer
``i``'s residual (:meth:`~lors.LorsLinearStack.refit_layer`); a basis-sharing stack keeps its basis and
refits layer ``i``'s coefficients.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..nn.lowrank import LowRankLinear
from ..nn.spectral import damped
from ..nn.static import StackLayer
from .calibration import batch_mask, default_forward, real_rows
from .heads import Sliced
from .linears import dense_weight, is_linear, set_submodule
from .reconstruct import RECON_LOSS, RECON_LR, BlockFit, reconstruct_block, relative_error
from .reconstruct import run_block as _run

RIDGE = 1e-2  # lambda of the correction, relative to mean(diag C)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the inputs it needs are recorded."""


def _split(args: tuple, kwargs: dict):
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


def block_inputs(model: nn.Module, blocks: Sequence[nn.Module], batches: Sequence,
                 forward: Optional[Callable] = None) -> tuple[list[torch.Tensor], list[list[tuple[tuple, dict]]]]:
    """(per batch: the hidden states ``model`` gives the first block, per batch and block: the other
    ``(args, kwargs)`` each block is called with). Blocks may be called differently (Gemma's sliding-window
    layers get their own attention mask), so every block's call is kept; the pass stops after the last block."""
    hiddens, calls, current = [], [], []

    def hook_for(i):
        def hook(module, args, kwargs):
            hidden, rest, kw = _split(args, kwargs)
            if i == 0:
                hiddens.append(hidden)
            current.append((rest, kw))
            if i == len(blocks) - 1:
                raise _Stop
        return hook

    handles = [b.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        for batch in batches:
            current = []
            try:
                (forward or default_forward)(model, batch)
            except _Stop:
                pass
            calls.append(current)
    finally:
        for h in handles:
            h.remove()
    if len(hiddens) != len(batches) or any(len(c) != len(blocks) for c in calls):
        raise ValueError("the calibration batches did not reach every block of the stack")
    return hiddens, calls


def _record_inputs(block: nn.Module, targets: Sequence[str], inputs, stop: bool,
                   masks: Optional[Sequence] = None) -> dict[str, list[torch.Tensor]]:
    """``{target: [input rows (tokens, d_in) per batch]}`` of ``targets`` while running ``block`` (padded
    positions, by ``masks[b]``, left out); with ``stop`` (one target) each pass ends once that target is called."""
    if stop and len(targets) != 1:
        raise ValueError("stop=True records one target")
    seen: dict[str, list] = {t: [] for t in targets}

    mask: list = [None]

    def hook_for(t):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            seen[t].append(real_rows(x.detach(), mask[0]))
            if stop:
                raise _Stop
        return hook

    handles = [block.get_submodule(t).register_forward_pre_hook(hook_for(t), with_kwargs=True) for t in targets]
    try:
        for b, (hidden, args, kwargs) in enumerate(inputs):
            mask[0] = masks[b] if masks is not None else None
            try:
                _run(block, hidden, args, kwargs)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return seen


def stages(block: nn.Module, targets: Sequence[str], inputs) -> list[list[str]]:
    """``targets`` grouped by the tensor they read, in the order the block calls them (one batch run).

    Tensors are compared by identity while every one of them is kept alive, so that a freed tensor's memory,
    reused by a later one, cannot make two different inputs look the same."""
    order: list[tuple[str, torch.Tensor]] = []  # holds the inputs: no address is reused during the run
    handles = []
    for t in targets:
        def hook(module, args, kwargs, t=t):
            order.append((t, args[0] if args else kwargs["input"]))
        handles.append(block.get_submodule(t).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        _run(block, *inputs[0])
    finally:
        for h in handles:
            h.remove()
    groups: list[tuple[torch.Tensor, list[str]]] = []
    for t, x in order:
        if any(t in names for _, names in groups):
            continue
        match = next((names for y, names in groups if y is x), None)
        if match is None:
            groups.append((x, [t]))
        else:
            match.append(t)
    found = [t for _, names in groups for t in names]
    missing = [t for t in targets if t not in found]
    if missing:
        raise ValueError(f"the block never calls {missing}; sequential fitting needs every target on the forward path")
    return [names for _, names in groups]


def corrected_target(W: torch.Tensor, X: torch.Tensor, C: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """``W + W (X - C) (C + ridge mean(diag C) I)^{-1}`` in float64 (``W`` itself when ``X == C``)."""
    W = W.detach().double()
    delta = W @ (X - C)
    return W + torch.linalg.solve(damped(C, ridge), delta.T).T  # (C + lambda I) symmetric


@torch.no_grad()
def _refit_dense(module: nn.Module, original: torch.Tensor, X: torch.Tensor, C: torch.Tensor, ridge: float,
                 correct: bool, least_squares: bool = False) -> None:
    """Refit a dense linear of a modular MLP or attention on the compressed network's inputs: a projection reading
    fewer (or re-based: ``least_squares``) features than the original (``X`` (d_orig, k)) becomes the least-squares
    map ``(W X + lambda W') (C + lambda I)^{-1}`` of the original ``W``, ridge-shrunk toward its current weight
    ``W'``; a layer whose inputs are the original's (its rows a
    transform of the original's) gets :func:`corrected_target`."""
    W, _ = dense_weight(module)
    if X.shape != C.shape or least_squares:  # ridge toward the current W: an exact fit stays exactly as it is
        lam = ridge * C.diagonal().mean().clamp_min(0)
        new = torch.linalg.solve(damped(C, ridge), (original.double() @ X + lam * W.double()).T).T
    elif correct:
        new = corrected_target(W, X, C, ridge)
    else:
        return
    W.copy_(new.to(W.dtype))


@torch.no_grad()
def refit(block: nn.Module, target: str, T: torch.Tensor, C: torch.Tensor) -> None:
    """Refit the private part of ``block.<target>`` to the dense target ``T`` on inputs of moment ``C``."""
    module = block.get_submodule(target)
    if isinstance(module, LowRankLinear):
        layer = LowRankLinear.from_weight(T, module.bias, rank=module.rank, input_moment=C)
        layer.to(module.U.dtype)
        if hasattr(module, "original_cls"):
            layer.original_cls = module.original_cls
        set_submodule(block, target, layer)
    elif isinstance(module, StackLayer) and hasattr(module.stack, "refit_layer"):
        module.stack.refit_layer(module.index, T, C)
    else:
        raise TypeError(f"sequential fitting cannot refit '{target}' ({type(module).__name__}); it refits "
                        "LowRankLinear layers and LORS / basis-sharing stacks")


@torch.no_grad()
def sequential_refit(model: nn.Module, teacher: nn.Module, container: str, targets: Sequence[str],
                     batches: Sequence, forward: Optional[Callable] = None, correct: bool = True,
                     shrinkage: float = 0.0, ridge: float = RIDGE,
                     log: Optional[Callable[[str], None]] = None, recon_steps: int = 0, recon_lr: float = RECON_LR,
                     fits: Optional[list[BlockFit]] = None, recon_loss: str = RECON_LOSS) -> nn.Module:
    """Refit the compressed ``model``'s ``targets`` in every block of ``container``, in order, on the inputs the
    compressed blocks below produce (see the module docstring); ``teacher`` is the original model (unchanged).
    ``model`` and ``teacher`` must have the same blocks at ``container``. ``shrinkage`` moves each measured
    ``C`` toward its diagonal before the fit (``(1 - s) C + s diag(C)``); ``ridge`` is the correction's lambda
    relative to ``mean(diag C)`` (larger: closer to ``T = W``). With ``recon_steps > 0`` each block, once refitted,
    is trained toward the original block's outputs (:func:`lors.apply.reconstruct.reconstruct_block`) before the
    next block's inputs are made, on the error weighting ``recon_loss`` (``"token"`` or ``"total"``); each block's
    :class:`~lors.apply.reconstruct.BlockFit` is appended to ``fits``. Returns ``model``."""
    was_training = model.training
    model.eval()
    teacher.eval()
    blocks, originals = list(model.get_submodule(container)), list(teacher.get_submodule(container))
    hidden_c, calls = block_inputs(model, blocks, batches, forward)
    hidden_o = [h.clone() for h in hidden_c]  # the embeddings are not compressed
    masks = [batch_mask(b) for b in batches]
    plan = stages(originals[0], targets, [(h, *c[0]) for h, c in zip(hidden_o, calls)])
    start = time.time()
    for i, (block, original) in enumerate(zip(blocks, originals)):
        inputs_o = [(h, *c[i]) for h, c in zip(hidden_o, calls)]
        inputs_c = [(h, *c[i]) for h, c in zip(hidden_c, calls)]
        seen_o = _record_inputs(original, [g[0] for g in plan], inputs_o, False, masks)
        for group in plan:
            seen_c = _record_inputs(block, [group[0]], inputs_c, True, masks)[group[0]]
            xo, xc = torch.cat(seen_o[group[0]]).double(), torch.cat(seen_c).double()
            reads = getattr(block.get_submodule(group[0]), "reads", None)  # a Sliced output projection
            if reads is not None:
                xc = xc[:, reads]
            C_raw, X_raw = xc.T @ xc / len(xc), xo.T @ xc / len(xc)
            least_squares = reads is not None or X_raw.shape != C_raw.shape  # modular: a map from fewer features
            off_diagonal = C_raw - torch.diag(C_raw.diagonal())
            C = C_raw - shrinkage * off_diagonal
            X = X_raw if least_squares else X_raw - shrinkage * off_diagonal  # X - C unchanged by the shrinkage
            for t in group:
                module = block.get_submodule(t)
                if isinstance(module, Sliced):  # modular attention: a dense linear on some features
                    module = module.linear
                if is_linear(module, exact=True):  # kept dense, with fewer neurons / features (modular)
                    # a least-squares map takes the moments as measured: shrinking C alone would bend it
                    _refit_dense(module, dense_weight(original.get_submodule(t))[0], X,
                                 C_raw if least_squares else C, ridge, correct, least_squares=least_squares)
                    continue
                W = dense_weight(original.get_submodule(t))[0]
                refit(block, t, corrected_target(W, X, C, ridge) if correct else W.double(), C)
        hidden_o = [_run(original, *x) for x in inputs_o]
        fitted = ""
        if recon_steps > 0:
            result = reconstruct_block(block, inputs_c, hidden_o, masks, recon_steps, recon_lr, recon_loss)
            fitted = f"; block error ({recon_loss}) {result.before:.3g} -> {result.after:.3g}"
            if fits is not None:
                fits.append(result)
        hidden_c = [_run(block, *x) for x in inputs_c]
        if log:
            drift = relative_error(hidden_c, hidden_o, masks, recon_loss)  # as reconstruction weighs it
            log(f"  block {i + 1}/{len(blocks)} refitted{fitted}; hidden-state drift ({recon_loss}, rms) "
                f"{math.sqrt(drift):.4f} ({time.time() - start:.0f} s)")
    model.train(was_training)
    return model
