"""Closed-form parameter counts for the LORS paper's two settings.

* DeiT-Tiny (192 dims, 12 blocks, MLP 768): static LORS on qkv, proj, fc1, fc2,
  rank 32, attention groups [1]*9 + [2, 4, 6], MLP groups [6, 4, 2] + [1]*9.
* AdaMixer decoder mixing (6 stages, query/channels 256, 2 sampling groups x 64
  in-points, 128 out-points): adaptive LORS generators with 16x16 cores,
  K = [1, 1, 2, 2, 3, 3], static LORS out projection of rank 8.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..accounting import (adaptive_lors_params, dense_stack_params, generator_stack_params, reduction,
                         static_lors_params)

DEIT_TINY = dict(dim=192, depth=12, mlp=768, rank=32,
                 attn_groups=[1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 4, 6],
                 mlp_groups=[6, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1])
ADAMIXER_LORS = dict(stages=6, query_dim=256, in_dim=256, n_groups=2, in_points=64, out_points=128,
                     core_size=16, core_groups=[1, 1, 2, 2, 3, 3], out_rank=8)


@dataclass
class Comparison:
    name: str
    dense: int
    lors: int

    @property
    def reduction(self) -> float:
        return reduction(self.dense, self.lors)


def vit_block_linears(dim: int, mlp: int) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer in a ViT block."""
    return {"qkv": (dim, 3 * dim), "proj": (dim, dim), "fc1": (dim, mlp), "fc2": (mlp, dim)}


def vit_linear_counts(dim: int, depth: int, mlp: int, rank, attn_groups, mlp_groups) -> Comparison:
    """Dense vs static-LORS parameters of the blocks' linear layers (weights + biases)."""
    dense = lors = 0
    for name, (i, o) in vit_block_linears(dim, mlp).items():
        groups = attn_groups if name in ("qkv", "proj") else mlp_groups
        dense += dense_stack_params(depth, i, o)
        lors += static_lors_params(depth, i, o, rank, groups)
    return Comparison(f"ViT linears ({dim}d, {depth} blocks)", dense, lors)


def mixing_counts(stages, query_dim, in_dim, n_groups, in_points, out_points, core_size, core_groups,
                  out_rank) -> Comparison:
    """Dense vs LORS AdaMixer mixing operators (generators + out projection + LayerNorm)."""
    c = in_dim // n_groups
    proj_in = c * out_points * n_groups
    norms = stages * 2 * query_dim
    dense = (generator_stack_params(stages, query_dim, c, c, n_groups)
             + generator_stack_params(stages, query_dim, out_points, in_points, n_groups)
             + dense_stack_params(stages, proj_in, query_dim) + norms)
    lors = (adaptive_lors_params(stages, query_dim, c, c, core_size, core_groups, n_groups)
            + adaptive_lors_params(stages, query_dim, out_points, in_points, core_size, core_groups, n_groups)
            + static_lors_params(stages, proj_in, query_dim, out_rank) + norms)
    return Comparison(f"AdaMixer mixing ({stages} stages)", dense, lors)


def paper_comparisons() -> list[Comparison]:
    return [vit_linear_counts(**DEIT_TINY), mixing_counts(**ADAMIXER_LORS)]


def format_comparisons(rows: list[Comparison]) -> str:
    lines = [f"{'component':<34}{'dense':>14}{'LORS':>14}{'reduction':>11}"]
    lines += [f"{r.name:<34}{r.dense:>14,}{r.lors:>14,}{r.reduction:>10.1f}%" for r in rows]
    return "\n".join(lines)
