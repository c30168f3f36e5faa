"""Inference latency of a LORS GPT against its merged dense twin and an LCT GPT, measured in one run.

GPT-2-small widths by default (d=768, 12 blocks, 12 heads, MLP 3072, byte vocabulary). Variants:

* ``merged``: ``lors.merge`` of the LORS model (plain dense weights, the reference);
* ``lors``: the LORS form as it trains (``path="auto"``: factors for few rows, W_i materialised for many);
* ``lors-materialise``: the LORS form building W_i on every call (``path="materialize"``);
* ``lors-cached``: the LORS form with :func:`lors.cache_weights` (W_i kept until a parameter changes);
* ``lct``: every block linear a rank-``--lct-rank`` LowRankLinear.

Prefill: one forward pass over ``--prefill-batch`` x ``--prefill-len`` tokens. Decode: batch 1, a
``--prompt``-token prompt in the key/value cache, then ``--decode`` tokens one at a time. Medians over
``--repeats``; ratios to ``merged``. ``--compile`` adds torch.compile'd prefill and training steps
(compiled / eager) for merged, lors and lct.

    python benchmarks/bench_inference.py [--repeats 3] [--compile] [--device cpu|cuda] [--bf16] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

import lors
from lors.models.gpt import GPT
from lors.nn.static import LorsLinearStack

from bench_scale import add_gpt_args  # noqa: E402  (benchmarks/ is the script's directory)


def build(args, device):
    torch.manual_seed(0)
    common = dict(vocab_size=args.vocab, block_size=max(args.prefill_len, args.prompt + args.decode), dim=args.dim,
                  depth=args.depth, heads=args.heads, mlp_dim=args.mlp)
    lors_model = GPT(**common, variant="lors", rank=args.rank, b_init_std=0.02).to(device).eval()
    models = {"merged": lors.merge(lors_model), "lors": lors_model}
    for name, path in (("lors-materialise", "materialize"), ("lors-cached", "auto")):
        m = copy.deepcopy(lors_model)
        for s in m.modules():
            if isinstance(s, LorsLinearStack):
                s.path = path
        if name == "lors-cached":
            lors.cache_weights(m)
        models[name] = m
    models["lct"] = GPT(**common, variant="lct", lct_rank=args.lct_rank).to(device).eval()
    return models


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode(model, prompt, tokens: int) -> None:
    cache = model.new_cache()
    logits = model(prompt, cache)[:, -1]
    for _ in range(tokens):
        logits = model(logits.argmax(-1, keepdim=True), cache)[:, -1]


def cache_bytes(model) -> int:
    return sum(w.numel() * w.element_size() for s in model.modules() if isinstance(s, LorsLinearStack)
               for _, w in s._weight_cache.values())


def measure(models, args, device, amp) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.prefill_batch, args.prefill_len), generator=g).to(device)
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=g).to(device)
    rows = []
    for name, model in models.items():
        with torch.no_grad(), amp():
            prefill = timed(lambda: model(batch), device, args.repeats)
            dec = timed(lambda: decode(model, prompt, args.decode), device, args.repeats) / args.decode
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        rows.append({"variant": name, "prefill_s": prefill, "decode_ms_per_token": dec * 1e3,
                     "param_mb": params / 2**20, "cache_mb": cache_bytes(model) / 2**20})
        print(f"  {name:17s} prefill {prefill:.3f}s  decode {dec * 1e3:.2f} ms/token  parameters "
              f"{params / 2**20:.0f}MB  weight cache {rows[-1]['cache_mb']:.0f}MB", flush=True)
    return rows


def train_step(model, x):
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)


def measure_compile(models, args, device, amp) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, args.vocab, (args.prefill_batch, args.prefill_len), generator=g).to(device)
    train_x = torch.randint(0, args.vocab, (4, min(128, args.prefill_len) + 1), generator=g).to(device)
    rows = []
    for name in ("merged", "lors", "lct"):
        eager = models[name]
        compiled = torch.compile(eager)
        row = {"variant": name}
        for label, fn in (("prefill", lambda m: m(batch)), ("train_step", lambda m: train_step(m, train_x))):
            grad = label == "train_step"
            for m in (eager, compiled):
                m.train(grad)
            with torch.set_grad_enabled(grad), amp():
                t0 = time.perf_counter()
                fn(compiled)  # compiles
                row[f"{label}_compile_s"] = time.perf_counter() - t0
                e = timed(lambda: fn(eager), device, args.repeats)
                c = timed(lambda: fn(compiled), device, args.repeats)
            row[f"{label}_eager_s"], row[f"{label}_compiled_s"] = e, c
        eager.eval()
        rows.append(row)
        print(f"  {name:7s} prefill compiled/eager {row['prefill_compiled_s'] / row['prefill_eager_s']:.2f} "
              f"({row['prefill_eager_s']:.3f}s eager)  train step compiled/eager "
              f"{row['train_step_compiled_s'] / row['train_step_eager_s']:.2f} ({row['train_step_eager_s']:.3f}s eager)",
              flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gpt_args(ap)
    ap.add_argument("--rank", type=int, default=32, help="LORS residual rank")
    ap.add_argument("--lct-rank", type=int, default=192)
    ap.add_argument("--prefill-batch", type=int, default=8)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd prefill and training steps")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    device = torch.device(args.device)
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else nullcontext
    print(f"GPT d={args.dim}, {args.depth} blocks, mlp {args.mlp}; LORS rank {args.rank}, LCT rank {args.lct_rank}; "
          f"prefill {args.prefill_batch}x{args.prefill_len}, decode {args.decode} tokens after {args.prompt}; "
          f"{args.device}{' bf16' if args.bf16 else ''}, {torch.get_num_threads()} threads", flush=True)
    models = build(args, device)
    rows = measure(models, args, device, amp)
    ref = rows[0]
    print("\nvariant | prefill / merged | decode / merged")
    for r in rows:
        print(f"{r['variant']} | x{r['prefill_s'] / ref['prefill_s']:.2f} | "
              f"x{r['decode_ms_per_token'] / ref['decode_ms_per_token']:.2f}")
    compiled = measure_compile(models, args, device, amp) if args.compile else []
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "compile": compiled}, indent=1))


if __name__ == "__main__":
    main()
