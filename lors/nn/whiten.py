"""Calibration-aware (activation-whitened) low-rank approximation of linear weights.

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

from .lowrank import rank_for_epsilon

DAMP = 1e-3


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
