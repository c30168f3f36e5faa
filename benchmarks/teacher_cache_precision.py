"""The teacher's top-k cache in fp32 against bf16-mixed: time per batch and how far the cached distributions move.

    python benchmarks/teacher_cache_precision.py --batches 16 --threads 2

Takes the first ``--batches`` distillation batches of SmolLM2 (windows of the calibration sources, 4 x 256 tokens,
as ``lors distill`` builds them), runs :func:`lors.tasks.distill.cache_topk` over them in the order fp32,
bf16-mixed, fp32, bf16-mixed (so drift of the machine shows), and prints seconds per batch and the ratio. Then it
compares the teacher in the two precisions on the same batches: the KL from its fp32 to its bf16-mixed next-token
distribution over the whole vocabulary (merging a tail into one bucket, as the cache does, can only lower a KL), the
share of tokens whose top-1 agrees, and the overlap of the cached top-k sets. The scale to read them against is the
student's KL to the teacher after distillation (0.2-0.5 nats on the evaluation windows, BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--topk", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lors.compression.config import CompressConfig
    from lors.compression.lm_distill import distill_batches
    from lors.compression.pretrained import load_causal_lm
    from lors.data.text import calibration_text
    from lors.engine.trainer import precision_context
    from lors.tasks.distill import TOPK_KEYS, cache_topk, logits

    teacher, tokenizer = load_causal_lm("smollm2")
    cfg = CompressConfig(budget=0.8, distill_steps=args.batches, distill_topk=args.topk).resolve("lm")
    batches, _ = distill_batches(tokenizer, calibration_text(cfg.calibration), cfg)
    runs, seconds = {}, {"fp32": [], "bf16-mixed": []}
    for precision in ("fp32", "bf16-mixed", "fp32", "bf16-mixed"):
        start = time.perf_counter()
        runs[precision] = cache_topk(teacher, batches, args.topk, precision=precision)
        seconds[precision].append((time.perf_counter() - start) / len(batches))
        print(f"{precision:>10}: {seconds[precision][-1]:.2f} s a batch of {cfg.batch_size} x {cfg.window} tokens")
    fp32, bf16 = (sum(seconds[p]) / 2 for p in ("fp32", "bf16-mixed"))
    print(f"bf16-mixed is {fp32 / bf16:.2f}x as fast as fp32 ({fp32:.2f} against {bf16:.2f} s a batch)")

    kl, top1, overlap, count = 0.0, 0, 0.0, 0
    for batch, a, b in zip(batches, runs["fp32"], runs["bf16-mixed"]):
        with torch.no_grad():  # the whole next-token distributions, not only the cached top-k
            full = torch.log_softmax(logits(teacher, batch).float(), -1)
            with precision_context(torch.device("cpu"), "bf16-mixed"):
                half = torch.log_softmax(logits(teacher, batch).float(), -1)
        kl += (full.exp() * (full - half)).sum().item()
        top1 += (full.argmax(-1) == half.argmax(-1)).sum().item()
        ia, ib = a[TOPK_KEYS[1]], b[TOPK_KEYS[1]]
        overlap += (ia.unsqueeze(-1) == ib.unsqueeze(-2)).any(-1).float().mean(-1).sum().item()
        count += ia[..., 0].numel()
    print(f"over {count:,} tokens: KL(fp32 || bf16-mixed) of the whole next-token distributions {kl / count:.5f} "
          f"nats a token, top-1 agreement {100 * top1 / count:.2f} %, top-{args.topk} sets overlap "
          f"{100 * overlap / count:.2f} %")

if __name__ == "__main__":
    main()
