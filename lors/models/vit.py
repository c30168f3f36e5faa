"""Vision Transformer / DeiT classifier whose blocks hold dense, LORS or LCT linear weights.

Pre-norm blocks (LayerNorm -> multi-head self-attention -> residual, LayerNorm ->
MLP -> residual), a class token, learned position embeddings, a final norm and a
linear head. ``variant`` decides how the blocks' qkv, proj, fc1 and fc2 weights
are held:

* ``dense``: every block owns ordinary ``nn.Linear`` layers;
* ``lors``: one :class:`~lors.LorsLinearStack` per kind (qkv, proj, fc1, fc2) across
  all blocks, owned by ``model.stacks``; each block uses a parameter-free view of
  its layer, so the shared weights appear once in ``state_dict``;
* ``lct``: every block linear is a :class:`~lors.LowRankLinear` of rank ``lct_rank``;
* ``cola``: every block linear is a :class:`~lors.nn.cola.CoLALinear` ``B σ(A x)`` of rank ``lct_rank``.
  (Factorising a trained dense model at a tolerance epsilon is done with
  :func:`lors.lct`, which the training engine calls after a dense warm-up.)

Norms, embeddings and the head stay dense in every variant.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.checks import block_indices, per_layer, positive_int
from ..nn.cola import CoLALinear
from ..nn.lowrank import LowRankLinear
from ..nn.static import LorsLinearStack

VARIANTS = ("dense", "lors", "lct", "cola")
PRESETS = {
    "deit-tiny": dict(dim=192, depth=12, heads=3, mlp_dim=768),
    "deit-small": dict(dim=384, depth=12, heads=6, mlp_dim=1536),
}
# The official LORS DeiT-Tiny schedule: more residual groups in late attention / early MLP layers.
PAPER_ATTN_GROUPS = [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 4, 6]
PAPER_MLP_GROUPS = [6, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1]
# Regex matching the block linears; `lors.lct` uses it as its default target for this model.
BLOCK_LINEARS = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"

LinearFactory = Callable[[str, int, int, int], nn.Module]  # (kind, block index, in, out) -> module


class Attention(nn.Module):
    """Multi-head self-attention over (B, T, C); ``causal``: token t attends to tokens <= t only."""

    def __init__(self, dim: int, heads: int, qkv: nn.Module, proj: nn.Module, causal: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.causal = heads, causal
        self.qkv, self.proj = qkv, proj

    def forward(self, x: torch.Tensor, kv: Optional[list] = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). ``kv``: this layer's key/value cache, ``[keys, values]`` of the earlier
        tokens ((B, heads, T_past, C/heads) each, or ``[None, None]`` before the first call), extended in place."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        past = 0
        if kv is not None:
            if kv[0] is not None:
                past = kv[0].shape[2]
                k, v = torch.cat([kv[0], k], 2), torch.cat([kv[1], v], 2)  # (B, heads, T_past + T, C/heads)
            kv[0], kv[1] = k, v
        mask, causal = None, self.causal and past == 0
        if self.causal and past and T > 1:  # new token t sees the past and the new tokens up to t
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (B, heads, T, C/heads)
        return self.proj(out.transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    def __init__(self, fc1: nn.Module, fc2: nn.Module):
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, nn.GELU(), fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (the ViT's and, with ``causal=True``, the GPT's); its four linears come from
    ``make_linear(kind, index, in, out)`` (dense, a LORS stack's layer view, or LowRankLinear)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, index: int, make_linear: LinearFactory,
                 causal: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, make_linear("qkv", index, dim, 3 * dim),
                              make_linear("proj", index, dim, dim), causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(make_linear("fc1", index, dim, mlp_dim), make_linear("fc2", index, mlp_dim, dim))

    def forward(self, x: torch.Tensor, kv: Optional[list] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), kv)
        return x + self.mlp(self.norm2(x))


def block_parameters(blocks: nn.Module, stacks: nn.Module) -> int:
    """Unique parameters of the blocks and of the LORS stacks they share (each tensor once)."""
    params = {id(p): p for p in blocks.parameters()}
    params.update({id(p): p for p in stacks.parameters()})
    return sum(p.numel() for p in params.values())


def linear_factory(variant: str, stacks: nn.ModuleDict, depth: int, dim: int, mlp_dim: int,
                   rank: int | Sequence[int], attn_groups: int | Sequence[int], mlp_groups: int | Sequence[int],
                   lct_rank: Optional[int], b_init_std: float = 0.0,
                   dense_blocks: Sequence[int] = ()) -> LinearFactory:
    """How the blocks' qkv, proj, fc1 and fc2 are held: ``dense`` (nn.Linear), ``lct`` (LowRankLinear of
    ``lct_rank``), ``cola`` (CoLALinear of ``lct_rank``) or ``lors`` (one LorsLinearStack per kind across the
    ``depth`` blocks, added to ``stacks``; each block gets a parameter-free view of its layer).
    ``dense_blocks`` (``lct`` and ``cola`` only): block indices, negative from the end, that keep ``nn.Linear``
    layers (Pufferfish keeps the first and last blocks full-rank)."""
    if variant == "dense":
        return lambda kind, i, d_in, d_out: nn.Linear(d_in, d_out)
    kept = block_indices(dense_blocks, depth, "dense_blocks")
    if variant in ("lct", "cola"):
        if lct_rank is None:
            raise ValueError(f"variant={variant!r} needs lct_rank (an int); to factorise at a tolerance, "
                             "train dense and call lors.lct(model, epsilon=...)")
        layer = LowRankLinear if variant == "lct" else CoLALinear
        return lambda kind, i, d_in, d_out: nn.Linear(d_in, d_out) if i in kept else layer(d_in, d_out, lct_rank)
    if kept:
        raise ValueError(f"dense_blocks applies to the variants 'lct' and 'cola', not {variant!r}")
    groups = {"qkv": per_layer(attn_groups, depth, "attn_groups"), "proj": per_layer(attn_groups, depth, "attn_groups"),
              "fc1": per_layer(mlp_groups, depth, "mlp_groups"), "fc2": per_layer(mlp_groups, depth, "mlp_groups")}
    shapes = {"qkv": (dim, 3 * dim), "proj": (dim, dim), "fc1": (dim, mlp_dim), "fc2": (mlp_dim, dim)}
    for kind, (d_in, d_out) in shapes.items():
        stacks[kind] = LorsLinearStack(depth, d_in, d_out, rank=rank, groups=groups[kind], b_init_std=b_init_std)
    return lambda kind, i, d_in, d_out: stacks[kind].layer(i)


class VisionTransformer(nn.Module):
    """ViT classifier. Input (B, in_chans, img_size, img_size) -> logits (B, num_classes).

    Args:
        img_size, patch_size, in_chans, num_classes: image and label geometry.
        dim, depth, heads, mlp_dim: transformer size (see ``PRESETS``).
        variant: ``"dense"``, ``"lors"``, ``"lct"`` or ``"cola"``.
        rank: LORS residual rank (int or one per block).
        attn_groups, mlp_groups: LORS residual groups per block for qkv/proj and fc1/fc2.
        lct_rank: rank of every block linear for ``variant="lct"`` or ``"cola"``.
        dense_blocks: with ``lct``/``cola``, blocks (negative: from the end) whose linears stay ``nn.Linear``.
        b_init_std: LORS ``B`` init (normal std; 0 = zero, the paper's).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 dim: int = 192, depth: int = 12, heads: int = 3, mlp_dim: int = 768, variant: str = "dense",
                 rank: int | Sequence[int] = 32, attn_groups: int | Sequence[int] = 1,
                 mlp_groups: int | Sequence[int] = 1, lct_rank: Optional[int] = None, b_init_std: float = 0.0,
                 dense_blocks: Sequence[int] = ()):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        for name, value in [("img_size", img_size), ("patch_size", patch_size), ("dim", dim), ("depth", depth)]:
            positive_int(value, name)
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be divisible by patch_size={patch_size}")
        self.variant = variant
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.stacks = nn.ModuleDict()  # LORS stacks shared by the blocks (empty unless variant="lors")

        make_linear = linear_factory(variant, self.stacks, depth, dim, mlp_dim, rank, attn_groups, mlp_groups,
                                     lct_rank, b_init_std, dense_blocks)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_dim, i, make_linear) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised class-token features (B, dim)."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, num_patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def no_weight_decay(self) -> set[str]:
        """Parameters that AdamW leaves undecayed (timm's convention): the class token and position embeddings."""
        return {"cls_token", "pos_embed"}

    def block_parameter_count(self) -> int:
        """Unique parameters held by the transformer blocks (including shared LORS stacks)."""
        return block_parameters(self.blocks, self.stacks)


SMALL = dict(dim=64, depth=12, heads=4, mlp_dim=128)  # sizes used when no preset is given


def resolve_sizes(preset: Optional[str], dim=None, depth=None, heads=None, mlp_dim=None) -> dict:
    """dim/depth/heads/mlp_dim from ``preset`` (or ``SMALL``), with explicit values taking precedence."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"model.preset must be one of {tuple(PRESETS)} or null, got {preset!r}")
    sizes = dict(PRESETS[preset] if preset else SMALL)
    sizes.update({k: v for k, v in dict(dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim).items() if v is not None})
    return sizes


def build_vit(cfg) -> VisionTransformer:
    """Build from a :class:`lors.cli.config.ViTConfig` (the only config -> constructor bridge)."""
    sizes = resolve_sizes(cfg.preset, cfg.dim, cfg.depth, cfg.heads, cfg.mlp_dim)
    return VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                             num_classes=cfg.num_classes, variant=cfg.variant, rank=cfg.rank,
                             attn_groups=cfg.attn_groups, mlp_groups=cfg.mlp_groups, lct_rank=cfg.lct_rank,
                             b_init_std=cfg.b_init_std, dense_blocks=cfg.dense_blocks, **sizes)
