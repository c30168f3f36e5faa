"""A nanoGPT-sized causal language model whose blocks hold dense, LORS or LCT linear weights.

Token + learned position embeddings, ``depth`` pre-norm blocks (the ViT's :class:`~lors.models.vit.Block`
with causal ``F.scaled_dot_product_attention``), a final LayerNorm and an output head tied to the token
embedding. ``variant`` holds the blocks' qkv, proj, fc1 and fc2 exactly as the ViT does (see
:func:`~lors.models.vit.linear_factory`): ``dense``, ``lors`` (one shared weight per kind across the blocks,
per-block rank/group lists), ``lct`` (LowRankLinear of ``lct_rank``) or ``cola`` (CoLALinear).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.checks import positive_int
from .vit import BLOCK_LINEARS, VARIANTS, Block, block_parameters, linear_factory  # noqa: F401  (BLOCK_LINEARS: the LCT targets)


class GPT(nn.Module):
    """Causal LM: token ids (B, T) -> next-token logits (B, T, vocab_size).

    Args:
        vocab_size: number of token ids (256 for bytes).
        block_size: longest context (positions learned).
        dim, depth, heads, mlp_dim: transformer size.
        variant, rank, attn_groups, mlp_groups, lct_rank, b_init_std, dense_blocks: how the block linears are
            held (as the ViT).
    """

    def __init__(self, vocab_size: int = 256, block_size: int = 256, dim: int = 128, depth: int = 12, heads: int = 4,
                 mlp_dim: int = 512, variant: str = "dense", rank: int | Sequence[int] = 8,
                 attn_groups: int | Sequence[int] = 1, mlp_groups: int | Sequence[int] = 1,
                 lct_rank: Optional[int] = None, b_init_std: float = 0.0, dense_blocks: Sequence[int] = ()):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        for name, value in [("vocab_size", vocab_size), ("block_size", block_size), ("dim", dim), ("depth", depth)]:
            positive_int(value, name)
        self.variant, self.block_size = variant, block_size
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, block_size, dim))
        self.stacks = nn.ModuleDict()  # LORS stacks shared by the blocks (empty unless variant="lors")
        make_linear = linear_factory(variant, self.stacks, depth, dim, mlp_dim, rank, attn_groups, mlp_groups,
                                     lct_rank, b_init_std, dense_blocks)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_dim, i, make_linear, causal=True) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok_embed.weight  # tied input/output embeddings
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, idx: torch.Tensor, cache: Optional[list] = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab_size).

        ``cache`` (from :meth:`new_cache`): the keys and values of the tokens already seen; ``idx`` continues
        them (positions start after them) and the cache is extended in place. Past + new tokens <= block_size.
        """
        T = idx.shape[1]
        past = 0 if cache is None or cache[0][0] is None else cache[0][0].shape[2]
        if past + T > self.block_size:
            raise ValueError(f"{past} cached + {T} new tokens exceed block_size={self.block_size}")
        x = self.tok_embed(idx) + self.pos_embed[:, past:past + T]  # (B, T, dim)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return self.head(self.norm(x))

    def new_cache(self) -> list:
        """An empty key/value cache for :meth:`forward`: one ``[keys, values]`` per block."""
        return [[None, None] for _ in self.blocks]

    def no_weight_decay(self) -> set[str]:
        """Parameters that AdamW leaves undecayed: the position embeddings."""
        return {"pos_embed"}

    def block_parameter_count(self) -> int:
        """Unique parameters held by the transformer blocks (including shared LORS stacks)."""
        return block_parameters(self.blocks, self.stacks)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Append ``tokens`` sampled tokens to ``idx`` (B, T); temperature 0 picks the most likely token.

        Keys and values are cached, so each new token costs one position; once the context would pass
        ``block_size`` the last ``block_size`` tokens are re-read (a sliding window without a cache)."""
        cache, fed = self.new_cache(), 0  # fed: tokens of idx already in the cache
        for _ in range(tokens):
            if idx.shape[1] <= self.block_size:
                logits = self(idx[:, fed:], cache)[:, -1].float()  # (B, vocab)
                fed = idx.shape[1]
            else:
                logits = self(idx[:, -self.block_size:])[:, -1].float()
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], 1)
        return idx


def build_gpt(cfg, vocab_size: int) -> GPT:
    """Build from a :class:`lors.cli.config.GPTConfig` and the tokenizer's vocabulary size."""
    return GPT(vocab_size=vocab_size, block_size=cfg.block_size, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
               mlp_dim=cfg.mlp_dim, variant=cfg.variant, rank=cfg.rank, attn_groups=cfg.attn_groups,
               mlp_groups=cfg.mlp_groups, lct_rank=cfg.lct_rank, b_init_std=cfg.b_init_std,
               dense_blocks=cfg.dense_blocks)
