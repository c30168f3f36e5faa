"""Static LORS (LORS_T): stacked linear layers that share one weight.

Layer ``i`` of a stack of ``N`` layers computes ``y = x @ W_i^T + b_i`` with

    W_i = W_shared + sum_{k=1..K_i} B_ik @ A_ik        A_ik: (r_i, d_in), B_ik: (d_out, r_i)

``W_shared`` is stored once; each layer keeps only its ``K_i`` groups of
rank-``r_i`` residual factors and (optionally) a private bias.

Also here: :class:`LinearStack`, the dense counterpart with the same
``stack(x, i)`` interface, and :class:`StackLayer`, a parameter-free view that
makes layer ``i`` of any stack look like an ordinary ``nn.Linear`` to the block
that uses it (so the shared weight is registered once, by the stack's owner).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checks import IntOrList, last_dim, per_layer, positive_int, rank_fits
from .spectral import calibrated_shared, rank_for_epsilon, whitened_spectrum, whitened_svd
from .stack import SharedStack

PATHS = ("auto", "materialize", "lowrank")


class LorsLinearStack(SharedStack):
    """``num_layers`` linear maps ``in_features -> out_features`` sharing one weight.

    Args:
        num_layers: number of stacked layers N.
        in_features, out_features: d_in and d_out of every layer.
        rank: rank r_i of each residual group; an int or a list of N ints.
        groups: number of residual groups K_i per layer; an int or a list of N ints.
        bias: give every layer a private bias (initialised to zero).
        path: how ``forward`` computes: ``"auto"`` (cheaper of the two by FLOPs),
            ``"materialize"`` (build W_i, one matmul) or ``"lowrank"``
            (``x W_shared^T + (x A^T) B^T``). All three are exact.
        b_init_std: standard deviation of a normal init of every ``B``; 0 (default, the
            paper's) starts every layer equal to the shared layer.

    Which computation runs (all exact):

    * with gradients (training): ``path``; ``"auto"`` takes the cheaper by multiply-adds, the factors for a
      few rows (decoding), the materialised W_i for many (training batches, prefill);
    * without gradients and ``cache_weights`` on (:func:`lors.cache_weights`): each W_i is materialised once
      and reused until a tensor it depends on changes, the speed of the merged dense model for the memory of
      the merged weights (N d_out d_in numbers per stack, the parameters LORS saved). Off by default.

    Parameters (``state_dict`` keys): ``shared_weight`` (d_out, d_in);
    ``A.{i}`` (K_i, r_i, d_in); ``B.{i}`` (K_i, d_out, r_i); ``bias`` (N, d_out).

    Init follows the paper: ``shared_weight`` as ``nn.Linear`` (Kaiming-uniform),
    every ``A`` Kaiming-uniform, every ``B`` and every bias zero, so at init
    every layer equals the shared layer.
    """

    shared_tensors = ("shared_weight",)  # used by every layer
    private_tensors = ("A", "B")  # per-layer low-rank residuals

    def __init__(self, num_layers: int, in_features: int, out_features: int,
                 rank: IntOrList, groups: IntOrList = 1, bias: bool = True,
                 path: str = "auto", b_init_std: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.num_layers = positive_int(num_layers, "num_layers")
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        if not (isinstance(b_init_std, (int, float)) and b_init_std >= 0):
            raise ValueError(f"b_init_std must be a number >= 0, got {b_init_std!r}")
        self.b_init_std = float(b_init_std)
        self.ranks = per_layer(rank, num_layers, "rank")
        self.groups = per_layer(groups, num_layers, "groups")
        rank_fits(self.ranks, out_features, in_features)
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.path = path
        kw = dict(device=device, dtype=dtype)
        self.shared_weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.A = nn.ParameterList(
            [nn.Parameter(torch.empty(k, r, in_features, **kw)) for r, k in zip(self.ranks, self.groups)])
        self.B = nn.ParameterList(
            [nn.Parameter(torch.empty(k, out_features, r, **kw)) for r, k in zip(self.ranks, self.groups)])
        if bias:
            self.bias = nn.Parameter(torch.empty(num_layers, out_features, **kw))
        else:
            self.register_parameter("bias", None)
        self.grad_balance = None  # see lors.balance_shared_gradients
        self.cache_weights = False  # see lors.cache_weights
        self._weight_cache: dict[int, tuple] = {}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.shared_weight, a=math.sqrt(5))  # nn.Linear's default
        bound = math.sqrt(6.0 / self.in_features)  # Kaiming-uniform, gain sqrt(2), fan_in = d_in
        for a in self.A:
            nn.init.uniform_(a, -bound, bound)
        for b in self.B:
            nn.init.normal_(b, std=self.b_init_std) if self.b_init_std else nn.init.zeros_(b)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    # -- factors -------------------------------------------------------------
    def factors(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's residual as one pair (B_cat (d_out, K r), A_cat (K r, d_in)), B_cat @ A_cat = sum_k B_ik A_ik."""
        A, B = self.A[i], self.B[i]  # (K, r, d_in), (K, d_out, r)
        return B.permute(1, 0, 2).reshape(self.out_features, -1), A.reshape(-1, self.in_features)

    def shared_weight_for(self, i: int) -> torch.Tensor:
        """The shared weight as layer i uses it (through ``grad_balance`` when that is on)."""
        w = self.shared_weight
        return w if self.grad_balance is None else self.grad_balance(w, "shared_weight", i)

    def weight(self, i: int) -> torch.Tensor:
        """Effective dense weight W_i (d_out, d_in)."""
        B, A = self.factors(i)
        return self.shared_weight_for(i) + B @ A

    def layer_bias(self, i: int):
        return None if self.bias is None else self.bias[i]

    def uses_lowrank_path(self, i: int, tokens: int) -> bool:
        """True when the factored path costs fewer multiply-adds for ``tokens`` input rows.

        materialize: R*d_in*d_out (build W_i) + T*d_in*d_out
        lowrank:     T*d_in*d_out + T*R*(d_in + d_out),   R = K_i * r_i
        """
        if self.path != "auto":
            return self.path == "lowrank"
        return tokens * (self.in_features + self.out_features) < self.in_features * self.out_features

    def cached_weight(self, i: int) -> torch.Tensor:
        """W_i from the weight cache (see ``cache_weights``), materialised again when a tensor it depends on
        changed: the key holds each tensor's identity, storage and in-place version counter, so an optimizer
        step, ``load_state_dict``, ``copy_`` or ``.to()`` all invalidate it."""
        tensors = (self.shared_weight, self.A[i], self.B[i])
        key = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        hit = self._weight_cache.get(i)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = (key, self.weight(i).detach())
            self._weight_cache[i] = hit
        return hit[1]

    def clear_weight_cache(self) -> None:
        self._weight_cache = {}

    def forward(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Apply layer ``i``: x (..., d_in) -> (..., d_out)."""
        last_dim(x, self.in_features, f"{type(self).__name__} layer {i}")
        if not 0 <= i < self.num_layers:
            raise IndexError(f"layer index {i} out of range for a stack of {self.num_layers} layers")
        bias = self.layer_bias(i)
        if self.cache_weights and not torch.is_grad_enabled():
            return F.linear(x, self.cached_weight(i), bias)
        if self.uses_lowrank_path(i, x.numel() // self.in_features):
            B, A = self.factors(i)
            return F.linear(x, self.shared_weight_for(i), bias) + F.linear(F.linear(x, A), B)
        return F.linear(x, self.weight(i), bias)

    # -- conversions ---------------------------------------------------------
    def layer(self, i: int) -> "StackLayer":
        """A parameter-free ``nn.Linear``-like view of layer i (see :class:`StackLayer`)."""
        return StackLayer(self, i)

    @torch.no_grad()
    def to_dense(self) -> nn.ModuleList:
        """N independent ``nn.Linear`` layers computing exactly the same outputs."""
        out = nn.ModuleList()
        for i in range(self.num_layers):
            lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                            device=self.shared_weight.device, dtype=self.shared_weight.dtype)
            lin.weight.copy_(self.weight(i))
            if self.bias is not None:
                lin.bias.copy_(self.bias[i])
            out.append(lin)
        return out

    @classmethod
    def from_linears(cls, linears: Sequence[nn.Linear], rank: IntOrList, groups: IntOrList = 1,
                     path: str = "auto") -> "LorsLinearStack":
        """Build a stack that approximates existing layers.

        ``shared_weight`` is the mean of the layers' weights; layer i's residual is
        the truncated SVD (rank ``r_i * K_i``) of ``W_i - mean = U S V^T``, split into K_i
        groups of rank r_i with ``B = U S`` and ``A = V^T`` (orthonormal rows, so A is never
        zero and B can learn even where the residual is zero). At full rank the result is exact.
        Computed in float64, stored in the layers' dtype.
        """
        linears = list(linears)
        if len(linears) == 0:
            raise ValueError("linears must hold at least one nn.Linear")
        has_bias = {l.bias is not None for l in linears}
        if len(has_bias) != 1:
            raise ValueError("linears must either all have a bias or all have none")
        biases = [l.bias for l in linears] if has_bias.pop() else None
        return cls.from_weights([l.weight for l in linears], biases, rank, groups, path)

    @classmethod
    @torch.no_grad()
    def from_weights(cls, weights: Sequence[torch.Tensor], biases: Optional[Sequence[torch.Tensor]],
                     rank: IntOrList, groups: IntOrList = 1, path: str = "auto",
                     input_moments: Optional[Sequence[torch.Tensor]] = None, iterations: int = 2) -> "LorsLinearStack":
        """Like :meth:`from_linears`, from weight matrices (d_out, d_in) and optional biases (d_out,).

        With ``input_moments`` (one ``E[x x^T]`` (d_in, d_in) per layer, from calibration inputs) the
        factors fit the layers' *outputs* on such inputs instead of the weights (see
        :mod:`lors.nn.spectral`): the shared weight is the output-weighted mean, each residual the
        whitened truncated SVD, refined over ``iterations`` alternations. Exact at full rank.
        """
        shapes = {tuple(w.shape) for w in weights}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"weights must all be matrices of the same shape, got {sorted(shapes)}")
        out_f, in_f = shapes.pop()
        ref = weights[0]
        stack = cls(len(weights), in_f, out_f, rank, groups, bias=biases is not None, path=path,
                    device=ref.device, dtype=ref.dtype)
        for r, k in zip(stack.ranks, stack.groups):
            rank_fits([r * k], out_f, in_f, name="rank*groups")
        w64 = torch.stack([w.detach().double() for w in weights])  # (N, d_out, d_in)
        if input_moments is None:
            mean = w64.mean(0)
            factors = []
            for i, (r, k) in enumerate(zip(stack.ranks, stack.groups)):
                U, S, Vh = torch.linalg.svd(w64[i] - mean, full_matrices=False)
                # Scale on B, orthonormal rows in A: exact, and where the residual is (near) zero this is the
                # paper's trainable start (A non-zero, B zero). Balanced sqrt(S) factors would both be zero
                # there, a saddle point that gradients cannot leave (e.g. deep-copied identical layers).
                factors.append((U[:, : r * k] * S[: r * k], Vh[: r * k]))  # (d_out, K r), (K r, d_in)
        else:
            mean, factors = _calibrated_stack(w64, input_moments, [r * k for r, k in zip(stack.ranks, stack.groups)],
                                              iterations)
        stack.shared_weight.copy_(mean)
        for i, ((B, A), r, k) in enumerate(zip(factors, stack.ranks, stack.groups)):
            stack.B[i].copy_(B.reshape(out_f, k, r).permute(1, 0, 2))
            stack.A[i].copy_(A.reshape(k, r, in_f))
            if biases is not None:
                stack.bias[i].copy_(biases[i])
        return stack

    @torch.no_grad()
    def refit_layer(self, i: int, target: torch.Tensor, moment: Optional[torch.Tensor] = None) -> None:
        """Refit layer ``i``'s residual (same rank and groups) so that ``W_shared + B A`` best matches
        ``target`` (d_out, d_in): on the outputs for inputs of second moment ``moment``, else on the weight."""
        r, k = self.ranks[i], self.groups[i]
        residual = target.detach().double() - self.shared_weight.double()
        if moment is None:
            U, S, Vh = torch.linalg.svd(residual, full_matrices=False)
            B, A = U[:, : r * k] * S[: r * k], Vh[: r * k]
        else:
            U, sig, A = whitened_svd(residual, moment, rank=r * k)
            B = U * sig
        self.B[i].copy_(B.reshape(self.out_features, k, r).permute(1, 0, 2))
        self.A[i].copy_(A.reshape(k, r, self.in_features))

    @staticmethod
    @torch.no_grad()
    def residual_ranks(weights: Sequence[torch.Tensor], epsilon: float,
                       input_moments: Optional[Sequence[torch.Tensor]] = None) -> list[int]:
        """Per layer, the smallest residual rank r with ||W_i - (mean + R_i,r)||_F <= epsilon ||W_i||_F.

        With ``input_moments`` the errors are measured on the outputs (whitened norms, calibrated mean).
        """
        w64 = torch.stack([w.detach().double() for w in weights])
        if input_moments is None:
            mean = w64.mean(0)
            return [rank_for_epsilon(torch.linalg.svdvals(w - mean), epsilon, reference_norm=float(w.norm()))
                    for w in w64]
        mean = calibrated_shared(w64, input_moments)
        return [rank_for_epsilon(whitened_spectrum(w - mean, C), epsilon,
                                 reference_norm=float(whitened_spectrum(w, C).norm()))
                for w, C in zip(w64, input_moments)]

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, in_features={self.in_features}, "
                f"out_features={self.out_features}, ranks={self.ranks}, groups={self.groups}, "
                f"bias={self.bias is not None}, path={self.path!r}")



def _calibrated_stack(w64: torch.Tensor, moments: Sequence[torch.Tensor], ranks: list[int], iterations: int):
    """Shared weight and per-layer (B, A) fitting the outputs: alternate the weighted mean and whitened SVDs."""
    if len(moments) != len(w64):
        raise ValueError(f"input_moments has {len(moments)} entries for {len(w64)} layers")
    mean = calibrated_shared(w64, moments)
    for it in range(max(1, iterations)):
        factors = []
        for w, C, rk in zip(w64, moments, ranks):
            U, sig, V = whitened_svd(w - mean, C, rank=rk)
            factors.append((U * sig, V))
        if it + 1 < iterations:
            mean = calibrated_shared([w - B @ A for w, (B, A) in zip(w64, factors)], moments)
    return mean, factors


class LinearStack(nn.Module):
    """Dense counterpart of :class:`LorsLinearStack`: N ``nn.Linear`` with the ``stack(x, i)`` interface."""

    def __init__(self, num_layers: int, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.num_layers = positive_int(num_layers, "num_layers")
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.layers = nn.ModuleList(
            [nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
             for _ in range(num_layers)])

    def weight(self, i: int) -> torch.Tensor:
        return self.layers[i].weight

    def layer_bias(self, i: int):
        return self.layers[i].bias

    def forward(self, x: torch.Tensor, i: int) -> torch.Tensor:
        last_dim(x, self.in_features, f"{type(self).__name__} layer {i}")
        return self.layers[i](x)

    def layer(self, i: int) -> "StackLayer":
        return StackLayer(self, i)

    def __len__(self) -> int:
        return self.num_layers


class StackLayer(nn.Module):
    """Layer ``i`` of a stack, usable wherever an ``nn.Linear`` is expected.

    The view holds no parameters and does not register the stack as a child,
    so the stack's shared weight appears once in ``parameters()`` and
    ``state_dict()`` (under the stack's owner). ``weight`` and ``bias`` are the
    effective tensors of layer i, recomputed on access.
    """

    def __init__(self, stack: nn.Module, index: int):
        super().__init__()
        if not 0 <= index < len(stack):
            raise IndexError(f"layer index {index} out of range for a stack of {len(stack)} layers")
        object.__setattr__(self, "stack", stack)  # not a submodule: owned elsewhere
        self.index = index
        self.in_features = stack.in_features
        self.out_features = stack.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.stack.weight(self.index)

    @property
    def bias(self):
        return self.stack.layer_bias(self.index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(x, self.index)

    def extra_repr(self) -> str:
        return (f"layer {self.index} of {type(self.stack).__name__}, in_features={self.in_features}, "
                f"out_features={self.out_features}")


def cache_weights(model: nn.Module, enabled: bool = True) -> int:
    """Switch the inference weight cache of every :class:`LorsLinearStack` in ``model`` on (or off, which frees it).

    With it on, a forward pass without gradients (``torch.no_grad()``, ``torch.inference_mode()``) applies
    each layer's materialised W_i, built on first use and rebuilt only after one of its tensors changed,
    so decoding runs at the merged dense model's speed; it holds N d_out d_in numbers per stack (the
    merged weights). Training (gradients on) never reads or fills it. Returns the number of stacks switched.
    """
    stacks = [m for m in model.modules() if isinstance(m, LorsLinearStack)]
    for m in stacks:
        m.cache_weights = bool(enabled)
        m.clear_weight_cache()
    return len(stacks)
