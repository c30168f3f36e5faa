"""Which attention parts a modular decomposition should keep head by head: one-shot fits of SmolLM2.

    python benchmarks/modular_attention.py --budget 0.8            # SmolLM2-135M, 2-4 min a row on 2 cores

Every row is ``lors.compress(method="modular", budget=B, shrinkage=0.2, sequential=False, allocation=A)`` -- MLPs by
their neurons -- with the attention's ``parts`` per head (``qk``: query-key feature pairs kept; ``vo``: value-output features by
the whitened eigenbasis) and the rest of the attention as pivoted lct at the same share; ``lct`` is the whole block
as pivoted lct. One-shot, so the parts are compared without the sequential refit or reconstruction hiding a worse
start. Scored on 16 held-out calibration windows (what a default may be chosen on) and, for reference, on 32
windows of pydoc and of the Bible spread over each whole text.
"""
from __future__ import annotations

import argparse
import time

import lors.compression.pipeline as pipeline
from lors.compression import CompressConfig
from lors.compression.evaluate import perplexity
from lors.compression.pretrained import load_causal_lm
from lors.data.text import calibration_text, eval_text, token_windows

VARIANTS = {  # name: (method, attention parts per head, allocation)
    "lct": ("lct", None, "uniform"), "lct, sensitivity": ("lct", None, "sensitivity"),
    "modular, attention lct": ("modular", (), "uniform"), "modular, vo per head": ("modular", ("vo",), "uniform"),
    "modular, qk + vo per head": ("modular", ("qk", "vo"), "uniform"),
    "modular, vo, sensitivity": ("modular", ("vo",), "sensitivity"),
    "modular, qk + vo, sensitivity": ("modular", ("qk", "vo"), "sensitivity")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.8)
    p.add_argument("--shrinkage", type=float, default=0.2)
    args = p.parse_args(argv)
    teacher, tokenizer = load_causal_lm("smollm2", progress=False, log=lambda line: None)
    texts = calibration_text("mixed")
    calib = token_windows(tokenizer, texts, 64, 256)
    held = token_windows(tokenizer, texts, 16, 256, skip=1)
    evals = {t: token_windows(tokenizer, eval_text(t), 32, 256) for t in ("pydoc", "bible")}
    print(f"SmolLM2-135M, one-shot at {args.budget:.0%} of the decoder's linears, shrinkage {args.shrinkage}; "
          f"dense: held-out {perplexity(teacher, held, 4)['ppl']:.2f}, "
          + ", ".join(f"{k} {perplexity(teacher, w, 4)['ppl']:.2f}" for k, w in evals.items()), flush=True)
    print(f"{'variant':<28}{'held-out':>10}{'pydoc':>9}{'bible':>9}{'params':>12}{'min':>6}")
    library = pipeline.ATTENTION_PARTS
    try:
        for name, (method, parts, allocation) in VARIANTS.items():
            start = time.time()
            pipeline.ATTENTION_PARTS = parts if parts is not None else library
            student, report = pipeline.compress(teacher, calib, CompressConfig(
                method=method, budget=args.budget, shrinkage=args.shrinkage, sequential=False, allocation=allocation))
            scores = [perplexity(student, w, 4)["ppl"] for w in (held, *evals.values())]
            print(f"{name:<28}" + "".join(f"{s:>9.2f} " for s in scores)
                  + f"{report.params:>11,}{(time.time() - start) / 60:>6.1f}", flush=True)
    finally:
        pipeline.ATTENTION_PARTS = library


if __name__ == "__main__":
    main()
