"""SmolLM2-135M (or any causal LM folder) compressed training-free: method x kept fraction -> held-out perplexity.

    python benchmarks/bench_llm.py --out runs/llm --fractions 0.9,0.8,0.6,0.5 \
        --configs lct-svd,lct-whiten,lct-seq,lors-seq,basis-seq
    python benchmarks/bench_llm.py --out runs/llm_domain --fractions 0.8 --configs lct-whiten,lct-seq \
        --calibrations bible,stdlib,mixed

Each config is METHOD-FIT[-option...]: METHOD lct | lors | basis; FIT svd (plain SVD of the weights), whiten
(one-shot whitened SVD on calibration moments), seq (whitened + sequential refit toward the original outputs),
seqraw (sequential without the correction); options: gN (share within groups of N blocks), spec (spectrum
allocation instead of uniform), shK (shrinkage K/100 toward the diagonal; shauto: chosen on 16 held-out
calibration windows, see lors.compression.pipeline.choose_shrinkage), itN (N LORS alternations), piv (pivoted storage,
r (in + out - r) numbers per rank-r matrix; lct only).
Moments are measured once per calibration source and reused. Prints one row per run and writes rows.json.
Machine: 2 CPU cores; the model's weights start from a 4-bit (Q4_1) grid.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch


def parse(config: str) -> dict:
    parts = config.split("-")
    method, fit, opts = parts[0], parts[1], parts[2:]
    kw = dict(method=method, init="svd" if fit == "svd" else "calibrated", sequential=fit.startswith("seq"),
              correct=fit == "seq", shrinkage=0.0, form="factors")
    for o in opts:
        if o.startswith("g"):
            kw["group_size"] = int(o[1:])
        elif o == "spec":
            kw["allocation"] = "spectrum"
        elif o == "shauto":
            kw["shrinkage"] = "auto"
        elif o.startswith("sh"):
            kw["shrinkage"] = int(o[2:]) / 100
        elif o == "piv":
            kw["form"] = "pivoted"
        elif o.startswith("it"):
            kw["fit_iterations"] = int(o[2:])
        else:
            raise SystemExit(f"unknown option {o!r} in config {config!r}")
    return kw  # CompressConfig fields


def plot(row_files: list[str], out: str) -> None:
    """Perplexity ratio to dense against the kept fraction, one line per config (mixed calibration)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [json.loads(Path(f).read_text()) for f in row_files]
    rows = [r for d in data if isinstance(d, list) for r in d if r["config"] != "dense"]
    runs = [d["rows"] for d in data if isinstance(d, dict)]  # results.json of `lors compress`: one point per row
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    for ax, text in zip(axes, ("pydoc", "bible")):
        for run in runs:
            for r in run[1:]:
                label = r["model"] if "%" in r["model"] else f"{r['model']} ({r['fraction']:.0%})"
                ax.plot(r["fraction"], r[f"ppl_{text}"] / run[0][f"ppl_{text}"], marker="*", ms=10, ls="",
                        label=label if ax is axes[0] else None)
        for config in sorted({r["config"] for r in rows}):
            pts = sorted((r["kept"], r[f"x_{text}"]) for r in rows if r["config"] == config
                         and r["calibration"] == "mixed" and r[f"x_{text}"] < 1000)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=config if ax is axes[0] else None)
        ax.axhline(1.5, color="gray", ls=":", lw=1)
        ax.axhline(3.0, color="gray", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("kept fraction of the 30 blocks' linear parameters")
        ax.set_title(f"held-out {text}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("perplexity / dense perplexity")
    fig.legend(fontsize=8, loc="center right")
    fig.suptitle("SmolLM2-135M (from a 4-bit grid), mixed calibration; dots: training-free bench_llm rows, "
                 "stars: lors compress runs (training-free, then distilled)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(out, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--fractions", default="0.8")
    ap.add_argument("--configs", default="lct-svd,lct-whiten,lct-seq")
    ap.add_argument("--calibrations", default="mixed")
    ap.add_argument("--calibration-windows", type=int, default=64)
    ap.add_argument("--eval", default="pydoc,bible")
    ap.add_argument("--eval-windows", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/llm")
    ap.add_argument("--plot", nargs="+", default=None, metavar="JSON", help="only plot these rows.json files (and "
                    "results.json files of lors compress, as single points) to OUT (a .png path)")
    args = ap.parse_args()
    if args.plot:
        return plot(args.plot, args.out)
    torch.set_num_threads(args.threads)

    from lors.apply.budget import stack_linears
    from lors.apply.calibration import input_moments
    from lors.compression import CompressConfig, perplexity
    from lors.compression.pipeline import as_batches, choose_shrinkage, fit, linear_params
    from lors.compression.pretrained import load_causal_lm
    from lors.data.text import calibration_text, eval_text, token_windows

    window = CompressConfig(budget=0.5).resolve("lm").window
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher, tok = load_causal_lm(args.model)
    container, targets, paths = stack_linears(teacher)
    base = linear_params(teacher, container, targets)
    evals = {e: token_windows(tok, eval_text(e), args.eval_windows, window) for e in args.eval.split(",")}
    rows = []

    def record(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))

    dense = {f"ppl_{e}": round(perplexity(teacher, w)["ppl"], 3) for e, w in evals.items()}
    record({"config": "dense", "calibration": "-", "fraction": 1.0, **dense})
    for source in args.calibrations.split(","):
        texts = calibration_text(source)
        calib = as_batches(token_windows(tok, texts, args.calibration_windows, window), 4)
        held = token_windows(tok, texts, 16, window, skip=1)  # held-out calibration windows (for shauto)
        t = time.time()
        moments = input_moments(teacher, paths, calib)
        print(f"moments of {source}: {time.time() - t:.0f} s", flush=True)
        for fraction in [float(f) for f in args.fractions.split(",")]:
            for config in args.configs.split(","):
                kw = parse(config)
                auto = kw["shrinkage"] == "auto"
                cfg = CompressConfig(budget=fraction, **{**kw, "shrinkage": 0.0 if auto else kw["shrinkage"]})
                cfg = cfg.resolve("lm")
                t = time.time()
                extra, shrinkage = {}, cfg.shrinkage
                if auto:
                    shrinkage, scores = choose_shrinkage(teacher, moments, lambda m: perplexity(m, held)["ppl"], cfg)
                    extra = {"shrinkage": shrinkage, "shrinkage_scores": {str(a): round(v, 3)
                                                                          for a, v in scores.items()}}
                student = fit(teacher, cfg, moments if cfg.init == "calibrated" else None, shrinkage, calib)
                seconds = time.time() - t
                ppl = {f"ppl_{e}": round(perplexity(student, w)["ppl"], 3) for e, w in evals.items()}
                kept = linear_params(student, container, targets, teacher) / base
                record({"config": config, "calibration": source, "fraction": fraction, "kept": round(kept, 4),
                        **ppl, **{f"x_{e}": round(ppl[f"ppl_{e}"] / dense[f"ppl_{e}"], 3) for e in evals},
                        "compress_s": round(seconds, 1), **extra,
                        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)})
                del student


if __name__ == "__main__":
    main()
