"""The declared LORS-stack protocol: a module holding N layers that share some of its tensors.

A :class:`SharedStack` names its tensors by role on the class, as PEFT's ``LoraLayer`` names
its adapter tensors: ``shared_tensors`` lists the parameter names (or name prefixes, i.e.
sub-modules) used by every layer, ``private_tensors`` those of the per-layer low-rank
residuals. Everything that treats shared tensors specially reads this declaration and
nothing else: optimizer groups (:func:`lors.param_groups`), parameter accounting,
gradient balancing (:func:`lors.balance_shared_gradients`) and freezing (``train_shared``).
Tensors in neither list (per-layer biases, say) are ordinary parameters.
"""
from __future__ import annotations

from typing import Iterator, Optional

from torch import nn

from .balance import GradBalance


def _belongs(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class SharedStack(nn.Module):
    """Base class of static and adaptive LORS stacks: ``num_layers`` layers, some tensors shared.

    Subclasses set ``shared_tensors`` / ``private_tensors`` (parameter names or prefixes, relative
    to the stack) and ``self.num_layers`` in ``__init__``. ``grad_balance`` is ``None`` or the
    :class:`~lors.nn.balance.GradBalance` that the stack applies to its shared tensors per layer.
    """

    shared_tensors: tuple[str, ...] = ()
    private_tensors: tuple[str, ...] = ()
    num_layers: int
    grad_balance: Optional[GradBalance] = None

    def shared_parameter_names(self) -> list[str]:
        """Names (relative to the stack) of the parameters every layer uses."""
        return [n for n, _ in self.named_parameters() if _belongs(n, self.shared_tensors)]

    def private_parameter_names(self) -> list[str]:
        """Names of the per-layer low-rank residual parameters."""
        return [n for n, _ in self.named_parameters() if _belongs(n, self.private_tensors)]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        params = dict(self.named_parameters())
        return (params[n] for n in self.shared_parameter_names())

    def private_parameters(self) -> Iterator[nn.Parameter]:
        params = dict(self.named_parameters())
        return (params[n] for n in self.private_parameter_names())

    def __len__(self) -> int:
        return self.num_layers


def shared_stacks(module: nn.Module) -> list[tuple[str, SharedStack]]:
    """``(path, stack)`` of every :class:`SharedStack` inside ``module`` (``module`` itself included)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, SharedStack)]
