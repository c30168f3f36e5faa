"""Distillation throughput of a compressed LM folder: fp32 against bf16-mixed, measured in one run.

    python benchmarks/distill_speed.py --model runs/quality/mod60 --steps 12 --threads 2

Builds the distillation batches exactly as ``lors distill`` does (windows of the calibration sources, 4 x 256 tokens
a step, with the teacher's cached top-64 of the first ``--cache-steps`` batches; the cache must exist: a ``lors
distill --topk 64 --steps 470`` run in the default precision writes it), then runs
:func:`lors.tasks.distill.distill` for ``--steps`` steps in each precision, each from a fresh load of the folder, in
the order fp32, bf16-mixed, fp32, bf16-mixed (so drift of the machine shows), and prints tokens/s per run, the
ratio, and the training loss of every run: the same steps on the same data, so the losses should agree to a few
parts in a thousand.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a folder written by lors compress --out")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--cache-steps", type=int, default=470, help="the steps of the run that wrote the cache")
    ap.add_argument("--cache-precision", choices=("fp32", "bf16-mixed"), default=None,
                    help="the precision the cache was made in (default: the LM default, as lors distill makes it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    import lors
    from lors.compression.config import CompressConfig
    from lors.compression.export import read_meta
    from lors.compression.pretrained import base_source
    from lors.compression.lm_distill import cached_teacher, distill_batches
    from lors.data.text import calibration_text
    from lors.tasks.distill import distill

    meta = read_meta(args.model)
    cfg = CompressConfig.from_dict({**meta["compress_config"], "distill_steps": args.cache_steps,
                                    "distill_topk": args.topk}).resolve("lm")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    batches, key = distill_batches(tokenizer, calibration_text(cfg.calibration), cfg,
                                   base_source(meta["source"]["base_model_name_or_path"])["sha256"])

    def no_teacher(*_):
        raise RuntimeError("the teacher's top-k is not cached for these batches: run lors distill --topk "
                           f"{args.topk} --steps {args.cache_steps} on a folder of this base model first")

    import lors.tasks.distill as distill_module
    distill_module.cache_topk = no_teacher  # never run a teacher here: the cached top-k or nothing
    batches = cached_teacher(nn.Identity(), batches, key, print, args.cache_precision or cfg.distill_precision)
    tokens = args.steps * cfg.batch_size * cfg.window
    results = {}
    for precision in ("fp32", "bf16-mixed", "fp32", "bf16-mixed"):
        student = lors.from_pretrained(args.model)
        student.get_input_embeddings().weight.requires_grad_(False)
        start = time.perf_counter()
        history = distill(student, nn.Identity(), batches, args.steps, lr=cfg.lr, loss="kl", progress=False,
                          checkpoint_every=args.steps, precision=precision, log=lambda _: None)
        seconds = time.perf_counter() - start
        results.setdefault(precision, []).append((tokens / seconds, history[-1]["train_loss"]))
        print(f"{precision:>10}: {tokens / seconds:6.0f} tokens/s ({seconds:.1f} s for {args.steps} steps), "
              f"train loss {history[-1]['train_loss']:.5f}")
    fp32 = sum(r[0] for r in results["fp32"]) / 2
    bf16 = sum(r[0] for r in results["bf16-mixed"]) / 2
    loss_gap = abs(results["bf16-mixed"][0][1] - results["fp32"][0][1]) / results["fp32"][0][1]
    print(f"bf16-mixed / fp32 tokens/s: {bf16 / fp32:.2f}x ({bf16:.0f} against {fp32:.0f}, {args.threads} threads); "
          f"training loss differs by {100 * loss_gap:.2f} %; {args.steps} steps of bf16-mixed would fit "
          f"{30 * 60 * bf16 / (cfg.batch_size * cfg.window):.0f} steps in 30 min")


if __name__ == "__main__":
    main()
