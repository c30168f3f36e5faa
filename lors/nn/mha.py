"""Let an existing ``nn.MultiheadAttention`` take its fused in-projection from a LORS stack.

``nn.MultiheadAttention`` reads ``self.in_proj_weight`` / ``self.in_proj_bias`` in its
forward (and in the fast path of ``nn.TransformerEncoderLayer``). :func:`attach` swaps
the instance's class to :class:`LorsMultiheadAttention`, whose two attributes are
read-only properties computing layer i of the stack; the original parameters are
removed so the stack's shared weight is the only copy. :func:`detach` turns it back
into a plain ``nn.MultiheadAttention`` holding dense parameters.
"""
from __future__ import annotations

import torch
from torch import nn


class LorsMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose in-projection is layer ``lors_index`` of ``lors_stack``."""

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self.lors_stack.weight(self.lors_index)

    @property
    def in_proj_bias(self):
        return self.lors_stack.layer_bias(self.lors_index)


def attach(mha: nn.MultiheadAttention, stack: nn.Module, index: int) -> None:
    """Make ``mha`` read its in-projection from ``stack`` layer ``index`` (in place)."""
    del mha._parameters["in_proj_weight"]
    mha._parameters.pop("in_proj_bias", None)
    mha.__class__ = LorsMultiheadAttention
    object.__setattr__(mha, "lors_stack", stack)  # not a submodule: the stack is owned elsewhere
    object.__setattr__(mha, "lors_index", index)


def detach(mha: LorsMultiheadAttention, weight: torch.Tensor, bias) -> None:
    """Turn ``mha`` back into a plain ``nn.MultiheadAttention`` with the given dense tensors (in place)."""
    for name in ("lors_stack", "lors_index"):
        object.__delattr__(mha, name)
    mha.__class__ = nn.MultiheadAttention
    mha.register_parameter("in_proj_weight", nn.Parameter(weight))
    mha.register_parameter("in_proj_bias", None if bias is None else nn.Parameter(bias))
