"""Spectral maths of every factorisation: ranks from a tolerance, truncated and whitened SVDs (float64).

``rank_for_epsilon`` picks the smallest rank meeting a relative Frobenius tolerance, ``balanced_svd``
gives balanced truncated factors, and the rest is calibration-aware (activation-whitened)
low-rank approximation of linear weights:

A linear map ``W`` (out, in) sees inputs ``x`` with second moment ``C = E[x x^T]``.
The mean squared output error of an approximation ``W'`` is

    E ||(W - W') x||^2 = ||(W - W') S||_F^2,    S = C^{1/2}   (symmetric square root)

so the best rank-r approximation *of the outputs* is the truncated SVD of ``W S``
mapped back: ``W' = [W S]_r S^{-1}`` (the idea behind SVD-LLM's truncation-aware
whitening and ASVD). ``C`` is damped (``C + damp * mean(diag C) * I``) so that
directions the calibration inputs never excite stay stable; because ``S`` and
``S^{-1}`` come from the same damped eigenvalues, ``S S^{-1} = I`` and full rank is
exact. All math is in float64.

For LORS, N layers share one weight: the shared weight minimising
``sum_i ||(W_i - W_s) S_i||^2`` is ``(sum_i W_i C_i)(sum_i C_i)^{-1}``, and each layer's
residual is then truncated in its own whitened space.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .checks import epsilon_in_range

DAMP = 1e-3


def rank_for_epsilon(singular_values: torch.Tensor, epsilon: float, reference_norm: Optional[float] = None) -> int:
    """Smallest r >= 1 with ||W - W_r||_F / ||W||_F <= epsilon.

    ``singular_values`` are those of W in descending order. The error of the
    best rank-r approximation is sqrt(sum_{j>r} s_j^2) (Eckart-Young).
    ``reference_norm`` replaces ||W||_F as the denominator (e.g. the norm of the
    full layer weight when W is only a residual).
    """
    epsilon = epsilon_in_range(epsilon)
    s2 = singular_values.detach().double().pow(2)
    total = s2.sum() if reference_norm is None else torch.tensor(float(reference_norm) ** 2, dtype=torch.float64)
    if total == 0:
        return 1
    # tail[r] = sum_{j >= r} s_j^2, the squared error of keeping the first r values
    tail = torch.flip(torch.cumsum(torch.flip(s2, [0]), 0), [0])
    tail = torch.cat([tail, tail.new_zeros(1)])
    rel = (tail / total).sqrt()
    ok = torch.nonzero(rel <= epsilon).flatten()
    return max(1, int(ok[0]))


def relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """||W - approx||_F / ||W||_F, computed in float64."""
    w = weight.detach().double()
    return float((w - approx.detach().double()).norm() / w.norm())


def balanced_svd(matrix: torch.Tensor, rank: Optional[int], epsilon: Optional[float]):
    """Truncated SVD of a float64 matrix as balanced factors (U sqrt(S), sqrt(S) V^T)."""
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    if rank is None:
        rank = rank_for_epsilon(S, epsilon)
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vh[:rank]


def damped(C: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """``C + damp * mean(diag C) * I`` in float64 (a zero ``C`` becomes the identity)."""
    C = C.detach().double()
    scale = C.diagonal().mean()
    if scale <= 0:
        return torch.eye(C.shape[0], dtype=torch.float64, device=C.device)
    return C + damp * scale * torch.eye(C.shape[0], dtype=torch.float64, device=C.device)


def whitener(C: torch.Tensor, damp: float = DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S^{-1}): the symmetric square root of the damped second moment and its inverse."""
    e, Q = torch.linalg.eigh(damped(C, damp))
    root = e.clamp_min(e.max() * 1e-12).sqrt()
    return (Q * root) @ Q.T, (Q / root) @ Q.T


def whitened_svd(W: torch.Tensor, C: torch.Tensor, rank: Optional[int] = None, epsilon: Optional[float] = None,
                 damp: float = DAMP, reference_norm: Optional[float] = None):
    """Truncated SVD in output space: ``(U (out, r), sigma (r,), V (r, in))`` with ``U diag(sigma) V`` the
    rank-r approximation of ``W`` with the least output error on inputs of second moment ``C``.

    Give ``rank`` or ``epsilon``; with ``epsilon`` the rank is the smallest whose whitened error
    ``||(W - W') S||_F`` is at most ``epsilon`` times ``reference_norm`` (default ``||W S||_F``).
    ``V = V_r^T S^{-1}`` (not orthonormal). Float64.
    """
    S, S_inv = whitener(C, damp)
    U, sig, Vh = torch.linalg.svd(W.detach().double() @ S, full_matrices=False)
    if rank is None:
        rank = rank_for_epsilon(sig, epsilon, reference_norm=reference_norm)
    return U[:, :rank], sig[:rank], Vh[:rank] @ S_inv


def whitened_spectrum(W: torch.Tensor, C: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """Singular values of ``W S``: the output-error each rank-1 component removes (squared)."""
    S, _ = whitener(C, damp)
    return torch.linalg.svdvals(W.detach().double() @ S)


def calibrated_shared(weights: Sequence[torch.Tensor], moments: Sequence[torch.Tensor],
                      damp: float = DAMP) -> torch.Tensor:
    """The shared weight minimising ``sum_i ||(W_i - W_s) S_i||^2``: ``(sum_i W_i C_i)(sum_i C_i)^{-1}``."""
    Cs = [damped(C, damp) for C in moments]
    lhs = sum(W.detach().double() @ C for W, C in zip(weights, Cs))
    return torch.linalg.solve(sum(Cs), lhs.T).T  # X (sum C) = lhs, sum C symmetric


def output_error(W: torch.Tensor, approx: torch.Tensor, C: torch.Tensor) -> float:
    """Relative output error ``||(W - approx) S|| / ||W S||`` (undamped S) on inputs with moment C."""
    W, approx, C = W.detach().double(), approx.detach().double(), C.detach().double()
    d = W - approx
    return float(((d @ C) * d).sum().clamp_min(0).sqrt() / ((W @ C) * W).sum().sqrt())


def stable_rank(weight: torch.Tensor) -> float:
    """``||W||_F^2 / ||W||_2^2``: a smooth lower bound on the rank (Cuttlefish tracks it to pick LCT ranks)."""
    s = torch.linalg.svdvals(weight.detach().double())
    return float((s.square().sum() / s[0].square()).item()) if s[0] > 0 else 0.0
