"""Linear layers (``nn.Linear`` and Hugging Face's GPT-2 ``Conv1D``) read, rebuilt and replaced alike.

``Conv1D`` (``transformers.pytorch_utils``) computes ``x @ W + b`` with its weight
stored transposed, ``(in, out)``. Everything in lors works on ``(out, in)`` weights;
these helpers read and rebuild either kind without importing transformers.
"""
from __future__ import annotations

import torch
from torch import nn

LINEAR_TYPES = (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)


def is_conv1d(module: nn.Module) -> bool:
    """True for a GPT-2 style ``Conv1D`` (weight (in, out), attributes ``nf``/``nx``)."""
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")
            and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.ndim == 2)


def is_linear(module: nn.Module, exact: bool = False) -> bool:
    """``nn.Linear`` (``exact``: the class itself, not a subclass) or ``Conv1D``."""
    if is_conv1d(module):
        return True
    return type(module) in LINEAR_TYPES if exact else isinstance(module, nn.Linear)


def dense_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (out, in), bias or None) of a linear layer; a transposed view for ``Conv1D``."""
    return (module.weight.T if is_conv1d(module) else module.weight), module.bias


@torch.no_grad()
def make_dense(cls: type, weight: torch.Tensor, bias) -> nn.Module:
    """A new ``cls`` layer (``nn.Linear`` or ``Conv1D``) holding ``weight`` (out, in) and ``bias``."""
    out_f, in_f = weight.shape
    if cls.__name__ == "Conv1D":
        layer = cls(out_f, in_f).to(device=weight.device, dtype=weight.dtype)  # Conv1D(nf=out, nx=in)
        layer.weight.copy_(weight.T)
        if bias is None:
            layer.bias = None
        else:
            layer.bias.copy_(bias)
        return layer
    layer = cls(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias)
    return layer


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the sub-module at dotted ``path`` of ``model`` by ``module``."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def tied_parameter_ids(model: nn.Module) -> set[int]:
    """ids of parameters reachable under more than one name (tied weights, e.g. GPT-2 ``lm_head`` and ``wte``)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, n in seen.items() if n > 1}


def unique_tensors(state: dict) -> dict:
    """Drop second names of tensors stored once (tied weights); contiguous CPU copies for safetensors."""
    out, seen = {}, set()
    for k in sorted(state):
        v = state[k]
        key = (v.data_ptr(), tuple(v.shape), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().cpu().contiguous()
    return out
