"""How unequal the token norms of a pretrained LM's hidden states are: why block reconstruction weighs tokens.

    python benchmarks/token_norms.py --blocks 0,8,16,24,28

SmolLM2-135M (weights from a 4-bit grid), 4 calibration windows of 256 tokens (the mixed sources). For the output of
each named block it prints the first token's norm, the median and largest norm of the others, and the first token's
share of the summed squared norm -- the share of a ``"total"`` reconstruction error it decides
(:mod:`lors.apply.reconstruct`). The last block is left out: Hugging Face hands its output back after the final norm.
"""
from __future__ import annotations

import argparse

import torch


def main(argv=None) -> None:
    from lors.compression.pretrained import load_causal_lm
    from lors.data.text import calibration_text, token_windows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", default="0,8,16,24,28", help="comma-separated block indices (0-based), not the last")
    p.add_argument("--windows", type=int, default=4)
    args = p.parse_args(argv)
    model, tokenizer = load_causal_lm("smollm2", progress=False)
    ids = torch.as_tensor(token_windows(tokenizer, calibration_text("mixed"), args.windows, 256))
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states  # [0]: embeddings, [i + 1]: block i's output
    blocks = [int(b) for b in args.blocks.split(",")]
    if not all(0 <= i < len(hidden) - 2 for i in blocks):
        p.error(f"--blocks: indices 0 to {len(hidden) - 3} (the last block's output comes back normed), got {blocks}")
    for i in blocks:
        norms = hidden[i + 1].norm(dim=-1)
        share = float(norms[:, 0].pow(2).sum() / norms.pow(2).sum())
        print(f"block {i}: first token {float(norms[:, 0].mean()):,.0f}, others median "
              f"{float(norms[:, 1:].median()):,.0f}, max {float(norms[:, 1:].max()):,.0f}; first token's share of the "
              f"summed square {share:.1%}")


if __name__ == "__main__":
    main()
