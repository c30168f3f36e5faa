"""Fully sharded data parallel (PyTorch's FSDP2, ``fully_shard``) for models with shared LORS weights.

A LORS weight is used by every block of its stack, so it must not be sharded with any single block: the
block that owned it would gather and free it around its own forward pass while the other blocks read
stale or freed storage. :func:`fsdp_wrap` therefore makes one FSDP unit per block (the block's own
parameters: norms, dense layers, ...) and leaves every :class:`~lors.nn.stack.SharedStack` (shared weight
*and* the private residuals that live in the stack) to the root unit, which covers every layer that uses
them. The root unit gathers them once at the start of the forward pass and reduce-scatters their
gradients once, after the last block's backward pass: a shared tensor is communicated once per step,
not once per layer.

Checkpoints stay in the unsharded format of :mod:`lors.engine.checkpoint`: :func:`full_state_dict` and
:func:`full_optimizer_state_dict` gather the shards (collectives: every rank calls them), and
:func:`shard_optimizer_state_dict` cuts a full optimizer state back into the shards of a wrapped model.
Works on CPU (gloo) and CUDA (NCCL).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from ..apply.discovery import structure
from ..nn.stack import SharedStack, shared_stacks


def _dtensor():
    from torch.distributed.tensor import DTensor, distribute_tensor
    return DTensor, distribute_tensor


def default_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``model``: the children of every ``nn.ModuleList`` / ``nn.Sequential`` holding two
    or more children of identical structure (:func:`lors.apply.discovery.structure`), the outermost such list
    winning, none inside a :class:`SharedStack`. Converted blocks qualify: their LORS layers are views."""
    inside = {id(m) for _, s in shared_stacks(model) for m in s.modules()}
    blocks, taken = [], set()
    for m in model.modules():
        if id(m) in inside or id(m) in taken or not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(m.children())
        if len(children) >= 2 and len({structure(c) for c in children}) == 1 and structure(children[0])[1]:
            blocks += children
            taken.update(id(x) for c in children for x in c.modules())
    return blocks


def _check_blocks(model: nn.Module, blocks: list[nn.Module]) -> None:
    """Refuse units that would split a tensor from the layers that use it."""
    owned = {id(m) for m in model.modules()}
    for block in blocks:
        if id(block) not in owned:
            raise ValueError(f"blocks: {type(block).__name__} is not a submodule of the model")
        if block is model:
            raise ValueError("blocks: the model itself is the root unit; pass its repeated blocks")
        inner = [type(m).__name__ for m in block.modules() if isinstance(m, SharedStack)]
        if inner:
            raise ValueError(f"blocks: a {type(block).__name__} contains a {inner[0]} whose shared tensors every "
                             "layer of the stack uses; shard the blocks around the stack, not the stack's owner")
    prefixes = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    owner = {id(p): i for i, b in enumerate(blocks) for p in b.parameters()}
    for name, p in model.named_parameters(remove_duplicate=False):
        i = owner.get(id(p))
        if i is not None and not name.startswith(prefixes[id(blocks[i])] + "."):
            raise ValueError(f"blocks: parameter '{name}' is also held by block {i} (tied weights); leave that "
                             "block out of `blocks` so the root unit holds the tensor")


def fsdp_wrap(model: nn.Module, blocks: Optional[Iterable[nn.Module]] = None, reshard_after_forward: bool = True,
              mesh=None, mp_policy=None) -> nn.Module:
    """Shard ``model`` in place with ``torch.distributed.fsdp.fully_shard``, keeping shared tensors whole.

    Args:
        model: a model (LORS-converted, LCT, dense or mixed) on its device, inside an initialised process
            group. Build the optimizer (:func:`lors.param_groups`) *after* wrapping: sharding replaces the
            parameters by ``DTensor`` parameters with the same names.
        blocks: the modules that become their own units (default :func:`default_blocks`: the repeated
            blocks). None of them may contain a :class:`SharedStack` or share a parameter with another
            unit; everything else (stacks, embeddings, heads, tied weights) lands in the root unit.
        reshard_after_forward: free each block's gathered parameters after its forward pass (ZeRO-3;
            ``False``: keep them until backward, ZeRO-2-like).
        mesh: a 1-D ``DeviceMesh`` (default: all ranks on the model's device type).
        mp_policy: a ``torch.distributed.fsdp.MixedPrecisionPolicy`` (e.g. bf16 parameters on GPU).

    Returns ``model`` (now an FSDP module). Shared LORS tensors are gathered once per forward pass and
    their gradients reduced once per step. Every tensor is sharded along its longest dimension (LORS factors
    have a leading groups dimension that is often 1).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    blocks = default_blocks(model) if blocks is None else list(blocks)
    _check_blocks(model, blocks)
    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy(), "shard_placement_fn": _longest_dim}
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _longest_dim(param: nn.Parameter):
    """Shard each tensor along its longest dimension: LORS factors are stored (K, r, d_in) / (K, d_out, r) with
    K (groups) often 1, and FSDP's default dim 0 would leave every such tensor on one rank."""
    from torch.distributed.tensor import Shard
    if param.ndim == 0:
        return None
    return Shard(max(range(param.ndim), key=lambda d: (param.shape[d], -d)))


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` holds ``DTensor`` parameters (it was wrapped by :func:`fsdp_wrap`)."""
    DTensor, _ = _dtensor()
    return any(isinstance(p, DTensor) for p in model.parameters())


def _full(value):
    DTensor, _ = _dtensor()
    return value.full_tensor() if isinstance(value, DTensor) else value


@torch.no_grad()
def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded ``state_dict`` of a (possibly) sharded model, on every rank (a collective), on CPU.
    Tied entries (one tensor under two names) stay one tensor."""
    gathered: dict[int, torch.Tensor] = {}
    out = {}
    for k, v in model.state_dict().items():
        if id(v) not in gathered:
            gathered[id(v)] = _full(v).detach().cpu()
        out[k] = gathered[id(v)]
    return out


@torch.no_grad()
def full_optimizer_state_dict(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor gathered (a collective), on CPU: the same
    layout (integer parameter indices) as an optimizer over the unsharded model."""
    sd = optimizer.state_dict()
    state = {i: {k: _full(v).detach().cpu() if torch.is_tensor(v) else v for k, v in s.items()}
             for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


@torch.no_grad()
def shard_optimizer_state_dict(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """The inverse of :func:`full_optimizer_state_dict`: full state tensors cut into the shards of the
    optimizer's (sharded) parameters, ready for ``optimizer.load_state_dict``."""
    DTensor, distribute_tensor = _dtensor()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, s in state_dict["state"].items():
        p = params[int(i)]
        state[i] = {k: distribute_tensor(v.to(p.device, p.dtype), p.device_mesh, p.placements)
                    if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape else v
                    for k, v in s.items()}
    return {"state": state, "param_groups": state_dict["param_groups"]}
