"""Inference of compressed SmolLM2 folders against the dense model, measured side by side in one run.

    python benchmarks/bench_compressed.py --out runs/bench_compressed [--threads 1] [--extra runs/smol80]

For each model (dense fp32; 80 % and 60 % of the decoder's linears kept, as ``U V`` factors and pivoted, stored and
run in float32 and in bfloat16) it starts a
fresh process that loads the model from its folder (dense: the cached fp32 Hugging Face folder; compressed:
``lors.from_pretrained``, no base model) and measures: the folder's size on disk, the resident memory before loading (imports only), after loading and
at its peak (the peak above the pre-load level is the model's own share), prefill tokens/s (one 512-token forward pass, best of 3) and batch-1 greedy decode tokens/s with
the KV cache (64 new tokens after the prompt, best of 3). Speed and memory depend on the structure (the ranks), not
on how well the factors fit, so the benchmark builds its compressed folders with the plain SVD (seconds, same ranks
as the calibrated recipe); ``--extra FOLDER`` adds folders made by ``lors compress`` (e.g. the best recipe).
Prints one JSON row per model and a table of ratios to dense; writes ``OUT/rows.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PREFILL, DECODE, REPEATS = 512, 64, 3


def folder_mb(folder: Path) -> float:
    weights = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in weights) / 2 ** 20


def rss_gb() -> float:
    """Peak resident set size of this process so far (GB): VmHWM, which starts anew at exec (ru_maxrss would
    carry over the parent's peak)."""
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 2 ** 20


def current_rss_gb() -> float:
    """Resident set size now (GB), from /proc/self/statm."""
    import os
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def measure(folder: str, threads: int) -> dict:
    """Runs in a fresh process: load, prefill, decode; returns the row."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    import lors

    base_rss = current_rss_gb()  # torch, transformers and lors imported, no model yet
    start = time.perf_counter()
    if (Path(folder) / "lors.json").is_file():
        model = lors.from_pretrained(folder)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    load_s, load_rss = time.perf_counter() - start, current_rss_gb()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, PREFILL), generator=g)
    prefill, decode = [], []
    with torch.inference_mode():
        for _ in range(REPEATS):
            t = time.perf_counter()
            model(input_ids=prompt, use_cache=False, logits_to_keep=1)  # as generate() prefills
            prefill.append(time.perf_counter() - t)
        short = prompt[:, :16]
        for _ in range(REPEATS):
            out = model(input_ids=short, use_cache=True)  # the prompt in the cache, then one token at a time
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(DECODE):
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            decode.append(time.perf_counter() - t)
    return {"folder": folder, "params": sum(p.numel() for p in model.parameters()), "size_mb": round(folder_mb(Path(folder)), 1),
            "load_s": round(load_s, 2), "rss_base_gb": round(base_rss, 3), "rss_loaded_gb": round(load_rss, 3),
            "rss_peak_gb": round(rss_gb(), 3),
            "prefill_tok_s": round(PREFILL / min(prefill), 1), "decode_tok_s": round(DECODE / min(decode), 2)}


def build_folders(out: Path, fractions, forms, dtypes=("float32",)) -> dict[str, Path]:
    """Compressed folders with the plain SVD at each fraction, form and storage dtype (made once, reused)."""
    import lors
    from lors.compression.pretrained import base_source, load_causal_lm

    folders = {}
    for fraction in fractions:
        for form in forms:
            for dtype in dtypes:
                suffix = "" if dtype == "float32" else f"_{dtype}"
                folder = out / f"svd{int(100 * fraction)}_{form}{suffix}"
                folders[f"{fraction:.0%} {form}{' ' + dtype if suffix else ''}"] = folder
                if (folder / "lors.json").is_file():
                    continue
                base, tok = load_causal_lm("smollm2", progress=False)
                cfg = lors.CompressConfig(budget=fraction, form=form, init="svd", sequential=False, shrinkage=0.0)
                small, _ = lors.compress(base, None, cfg)
                lors.save_pretrained(small, folder, tok, cfg, base_source("smollm2"), dtype=dtype)
                print(f"built {folder}", flush=True)
    return folders


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_compressed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="measure every model this many times, interleaved")
    ap.add_argument("--fractions", default="0.8,0.6")
    ap.add_argument("--forms", default="factors,pivoted")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="storage (and compute) dtypes of the folders")
    ap.add_argument("--extra", action="append", default=[], help="another compressed folder to measure")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one model, this process
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.threads)))
        return
    from lors.compression.pretrained import SMOLLM2_GGUF, cache_dir, load_causal_lm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_causal_lm("smollm2", progress=False)  # makes the cached fp32 folder once
    models = {"dense fp32": cache_dir() / f"{Path(SMOLLM2_GGUF).stem}-fp32"}
    models.update(build_folders(out, [float(f) for f in args.fractions.split(",")], args.forms.split(","),
                                args.dtypes.split(",")))
    models.update({Path(e).name: Path(e) for e in args.extra})
    best: dict[str, dict] = {}
    for round_ in range(args.rounds):  # models interleaved, so that a slow spell of the machine hits them all
        for name, folder in models.items():
            done = subprocess.run([sys.executable, __file__, "--measure", str(folder), "--threads",
                                   str(args.threads)], capture_output=True, text=True, check=True)
            row = {"model": name, **json.loads(done.stdout.strip().splitlines()[-1])}
            print(f"round {round_ + 1}: {json.dumps(row)}", flush=True)
            old = best.setdefault(name, row)
            for key in ("prefill_tok_s", "decode_tok_s"):  # the fastest round; memory: the largest
                old[key] = max(old[key], row[key])
            old["rss_peak_gb"] = max(old["rss_peak_gb"], row["rss_peak_gb"])
    rows = list(best.values())
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    dense = rows[0]
    print(f"\n{args.threads} thread(s); prefill {PREFILL} tokens, decode {DECODE} tokens at batch 1 (best of {REPEATS} "
          f"in each of {args.rounds} rounds; peak RSS: the largest)")
    print(f"{'model':<20}{'params':>8}{'folder':>9}{'peak RSS':>10}{'above base':>12}{'prefill':>9}{'decode':>8}"
          "   (ratios to dense)")
    for r in rows:
        above = (r["rss_peak_gb"] - r["rss_base_gb"]) / (dense["rss_peak_gb"] - dense["rss_base_gb"])
        print(f"{r['model']:<20}{r['params'] / dense['params']:>8.2f}{r['size_mb'] / dense['size_mb']:>9.2f}"
              f"{r['rss_peak_gb'] / dense['rss_peak_gb']:>10.2f}{above:>12.2f}"
              f"{r['prefill_tok_s'] / dense['prefill_tok_s']:>9.2f}{r['decode_tok_s'] / dense['decode_tok_s']:>8.2f}")


if __name__ == "__main__":
    main()
