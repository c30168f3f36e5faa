"""Dense, LORS, LCT and parameter-matched dense GPTs on the same tokens: bits per byte against block parameters.

    python benchmarks/lm_compare.py --prefix kjv_gpt --variants dense,lors,lct,dense2 --seeds 0,1,2 --workers 2
    python benchmarks/lm_compare.py --prefix text_gpt --variants dense,lors,lct --seeds 0 --set train.max_steps=300

Trains ``configs/<prefix>_<variant>.yaml`` for every variant and seed (``--workers`` processes, one torch thread
each), then prints the validation bpb per variant (mean +- std over seeds, and per seed) with the block
parameters, writes ``results.json`` and plots ``curves.png`` (bpb against step) and ``pareto.png`` (final bpb
against block parameters) in ``--out``. Runs already finished in ``--out`` are read, not trained again.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from lors.cli.config import load_config
    from lors.cli.experiment import build_experiment, run_training

    cfg = load_config(ROOT / "configs" / f"{job['prefix']}_{job['variant']}.yaml",
                      [f"train.seed={job['seed']}", "train.progress=false", *job["sets"]])
    run_dir = Path(job["out"]) / f"{job['variant']}_s{job['seed']}"
    exp, t0 = build_experiment(cfg, run_dir), time.time()
    holder = {}
    build = exp.build_model
    exp.build_model = lambda: holder.setdefault("m", build())
    history = run_training(cfg, run_dir, log=lambda s: None, experiment=exp)
    per_epoch, cap = -(-len(exp.train_set) // cfg.data.batch_size), cfg.train.max_steps or float("inf")
    steps = [min(h["epoch"] * per_epoch, cap) for h in history]
    return {**job, "block_params": holder["m"].block_parameter_count(), "bpb": history[-1]["bpb"],
            "curve": [(s, h["bpb"]) for s, h in zip(steps, history)], "minutes": round((time.time() - t0) / 60, 1)}


def table(rows: list[dict]) -> str:
    lines = [f"{'variant':<8}{'block params':>14}{'bpb mean +- std':>20}   per seed"]
    dense = [r["bpb"] for r in rows if r["variant"] == "dense"]
    for v in dict.fromkeys(r["variant"] for r in rows):
        b = [r["bpb"] for r in rows if r["variant"] == v]
        std = statistics.stdev(b) if len(b) > 1 else 0.0
        rel = f"  ({100 * (statistics.mean(b) / statistics.mean(dense) - 1):+.2f}% vs dense)" if dense else ""
        params = next(r["block_params"] for r in rows if r["variant"] == v)
        lines.append(f"{v:<8}{params:>14,}{statistics.mean(b):>12.4f} +- {std:.4f}   "
                     f"{' / '.join(f'{x:.4f}' for x in b)}{rel}")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    colors = dict(zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for v in variants:
        runs = [r for r in rows if r["variant"] == v]
        steps = [s for s, _ in runs[0]["curve"]]
        curves = [[b for _, b in r["curve"]] for r in runs]
        mean = [statistics.mean(c) for c in zip(*curves)]
        ax.plot(steps, mean, marker="o", ms=3, color=colors[v], label=f"{v} ({runs[0]['block_params']:,} block params)")
    ax.set(xlabel="step", ylabel="validation bits per byte", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    for v in variants:
        b = [r["bpb"] for r in rows if r["variant"] == v]
        ax.errorbar(next(r["block_params"] for r in rows if r["variant"] == v), statistics.mean(b),
                    yerr=statistics.stdev(b) if len(b) > 1 else None, fmt="o", capsize=4, color=colors[v], label=v)
    ax.set(xscale="log", xlabel="parameters in the transformer blocks", ylabel="final validation bpb", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close("all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", default="kjv_gpt", help="configs/<prefix>_<variant>.yaml")
    ap.add_argument("--variants", default="dense,lors,lct,dense2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ap.add_argument("--out", default=None, help="default: runs/<prefix>_compare")
    args = ap.parse_args()
    out = Path(args.out or f"runs/{args.prefix}_compare")
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["variant"], r["seed"]): r for r in json.loads((out / "results.json").read_text())} \
        if (out / "results.json").is_file() else {}
    jobs = [{"prefix": args.prefix, "variant": v, "seed": int(s), "sets": args.set, "out": str(out)}
            for s in args.seeds.split(",") for v in args.variants.split(",") if (v, int(s)) not in done]
    rows = list(done.values())
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for row in pool.imap_unordered(train, jobs):
            rows.append(row)
            print(f"{row['variant']} seed {row['seed']}: bpb {row['bpb']:.4f} ({row['minutes']} min)", flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=1))
    order = {v: i for i, v in enumerate(args.variants.split(","))}
    rows.sort(key=lambda r: (order.get(r["variant"], 99), r["seed"]))
    print(table(rows))
    plot(rows, out, f"{args.prefix}: validation bpb, mean over seeds {args.seeds}")


if __name__ == "__main__":
    main()
