"""Fold a converted model back into dense weights: :func:`merge` (explicit; never done by ``train()``/``eval()``)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..nn import mha as mha_adapter
from ..nn.basis import BasisSharedStack
from ..nn.lowrank import LowRankLinear
from ..nn.pivoted import PivotedLowRankLinear
from ..nn.static import LorsLinearStack, StackLayer
from .linears import make_dense, set_submodule


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """A new model with every LORS stack and factorised layer (LowRankLinear, PivotedLowRankLinear) folded back into dense weights.

    The input is not modified. Weights are formed in float64 and cast to their dtype,
    so outputs equal the converted model's to float tolerance.
    """
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, StackLayer):
            set_submodule(model, name, make_dense(getattr(m, "original_cls", nn.Linear), *_dense(m.stack, m.index)))
        elif isinstance(m, mha_adapter.LorsMultiheadAttention):
            mha_adapter.detach(m, *_dense(m.lors_stack, m.lors_index))
        elif isinstance(m, (LowRankLinear, PivotedLowRankLinear)):
            W = m.to_dense().weight
            set_submodule(model, name, make_dense(getattr(m, "original_cls", nn.Linear), W, m.bias))
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if child_name.startswith("lors_") and isinstance(child, nn.ModuleDict):
                delattr(m, child_name)
    if hasattr(model, "lors_conversion"):
        del model.lors_conversion
    vars(model).pop("save_pretrained", None)  # back to the class's own save_pretrained
    return model


def _dense(stack: LorsLinearStack | BasisSharedStack, i: int):
    if isinstance(stack, BasisSharedStack):
        W = (stack.basis.double() @ stack.coefficients[i].double()).to(stack.basis.dtype)
    else:
        B, A = stack.factors(i)
        W = (stack.shared_weight.double() + B.double() @ A.double()).to(stack.shared_weight.dtype)
    b = stack.layer_bias(i)
    return W, (None if b is None else b.detach().clone())


