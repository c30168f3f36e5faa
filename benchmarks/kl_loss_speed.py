"""The cached top-k KL loss's forward + backward at T = 1 with and without the division by T, measured in one run.

    python benchmarks/kl_loss_speed.py --threads 2

SmolLM2's distillation step ends in :func:`lors.tasks.distill.topk_kl_loss` over (4, 256, 49,152) logits that the
bf16-mixed forward leaves in bfloat16. The loss casts them to float32 and, at T != 1, divides them by T: one more
pass over 50 M numbers forward and one backward. At T = 1 it now skips the division. This times the loss's forward
and backward at T = 1 (no division) against T = 1 + 1e-6 (the division the loss did at every T before; the same
arithmetic to 1e-6), alternating, on random logits of SmolLM2's shape, and prints the median times and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--vocab", type=int, default=49152)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lors.tasks.distill import topk_kl_loss

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 256, args.vocab, generator=g)).to(torch.bfloat16)
    teacher = torch.log_softmax(3 * torch.randn(4, 256, args.vocab, generator=g), -1).topk(64, -1)
    times = {}
    for _ in range(args.repeats):
        for label, temperature in (("T = 1 (no division)", 1.0), ("T = 1 + 1e-6 (divides)", 1.0 + 1e-6)):
            x = logits.clone().requires_grad_(True)
            start = time.perf_counter()
            topk_kl_loss(x, teacher.values, teacher.indices.int(), None, temperature).backward()
            times.setdefault(label, []).append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for label, t in medians.items():
        print(f"{label:>24}: {1000 * t:7.1f} ms forward + backward (median of {args.repeats})")
    a, b = medians.values()
    print(f"division / none: {b / a:.2f}x; saved {1000 * (b - a):.0f} ms a step ({args.threads} threads)")


if __name__ == "__main__":
    main()
