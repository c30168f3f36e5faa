"""Per-layer gradient balancing for tensors that LORS shares across layers.

A tensor shared by N layers receives the sum of N per-layer gradients, and Adam steps
along that sum. When the layers' gradients differ a lot in size the sum points where the
largest one wants to go. In a trained LORS AdaMixer decoder the first stage's contribution
to the shared generators' gradient is 6-9 times the last stage's, and the six
contributions are nearly orthogonal (cosine 0.0-0.25), so the shared weight is steered by
the first stage while a dense decoder's stages each get their own Adam-normalised step
(RESULTS.md). :class:`GradBalance` rescales, in the backward pass only, layer i's
contribution by ``mean_j(n_j) / n_i``, where ``n_i`` is a running average of the size
(Frobenius norm) of layer i's contribution. Every layer then steers the shared tensor
equally, and the summed gradient keeps about its unbalanced size (so gradient clipping
sees the same scale). The forward pass is unchanged.

On that decoder and on the digits ViT balancing did *not* help (RESULTS.md): it is an option, off by default.

Stacks call it on their shared tensors when it is switched on (``stack.grad_balance``);
:func:`lors.balance_shared_gradients` switches it on for every stack in a model.
"""
from __future__ import annotations

import torch


class _BalanceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, balance, name, i):
        ctx.balance, ctx.name, ctx.i = balance, name, i
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return ctx.balance.rescale(grad, ctx.name, ctx.i), None, None, None


class GradBalance:
    """Running per-layer gradient sizes of the shared tensors of one stack of ``num_layers`` layers.

    Args:
        num_layers: N, the number of layers that use each shared tensor.
        beta: decay of the running average of each layer's gradient norm (0 uses the current
            step's norms only).

    ``balance(tensor, name, i)`` returns ``tensor`` unchanged in the forward pass; in the backward
    pass the gradient that reaches it from layer ``i``'s use is multiplied by
    ``mean_j(n_j) / n_i``, where ``n`` are the running norms of tensor ``name``'s per-layer
    gradients from the earlier backward passes (the mean over the layers seen so far), and is
    then added to ``n_i``. A layer's first gradient passes unscaled and sets its running norm,
    so the first step is the plain sum; a layer whose gradients have all been zero is left out.
    """

    def __init__(self, num_layers: int, beta: float = 0.99):
        if not (isinstance(num_layers, int) and num_layers > 0):
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.num_layers, self.beta = num_layers, float(beta)
        self.norms: dict[str, torch.Tensor] = {}  # name -> (num_layers,) running norms, 0 = not seen yet
        self._pass: dict[str, torch.Tensor] = {}  # name -> the current backward pass's norms
        self._done: dict[str, torch.Tensor] = {}  # name -> which layers the current pass has seen

    def __call__(self, tensor: torch.Tensor, name: str, i: int) -> torch.Tensor:
        if not (torch.is_grad_enabled() and tensor.requires_grad):
            return tensor
        return _BalanceGrad.apply(tensor, self, name, i)

    @torch.no_grad()
    def rescale(self, grad: torch.Tensor, name: str, i: int) -> torch.Tensor:
        """Rescale layer i's gradient of ``name`` by the running norms of the earlier passes; note its norm."""
        if name not in self.norms or self.norms[name].device != grad.device:
            z = torch.zeros(self.num_layers, device=grad.device)
            self.norms[name], self._pass[name], self._done[name] = z, z.clone(), z.bool()
        norms, this_pass, done = self.norms[name], self._pass[name], self._done[name]
        # A layer seen twice means a new backward pass began: fold the last pass's norms into the running ones.
        # Tensor ops only (no host sync); the scales of one pass never depend on the order of its layers.
        new_pass = done[i]
        seen = norms > 0
        folded = torch.where(done, torch.where(seen, self.beta * norms + (1.0 - self.beta) * this_pass, this_pass),
                             norms)
        norms.copy_(torch.where(new_pass, folded, norms))
        done.logical_and_(~new_pass)
        seen = norms > 0
        mean = norms.sum() / seen.sum().clamp_min(1)
        scale = torch.where(seen[i], mean / norms[i].clamp_min(torch.finfo(norms.dtype).tiny), torch.ones_like(mean))
        n = grad.float().norm()
        finite = torch.isfinite(n)
        this_pass[i] = torch.where(finite, n, this_pass[i])
        done[i] = finite & (n > 0)  # a zero or non-finite gradient leaves the running norm alone
        return grad * scale.to(grad.dtype)

    def __repr__(self) -> str:
        return f"GradBalance(num_layers={self.num_layers}, beta={self.beta})"
