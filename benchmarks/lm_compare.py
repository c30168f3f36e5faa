"""Dense, LORS, LCT and parameter-matched dense GPTs on the same tokens: bits per byte against block parameters.

    python benchmarks/lm_compare.py --prefix kjv_gpt --variants dense,lors,lct,dense2 --seeds 0,1,2 --workers 2
    python benchmarks/lm_compare.py --prefix text_gpt --variants dense,lors,lct --seeds 0 --set train.max_steps=300

Trains ``configs/<prefix>_<variant>.yaml`` for every variant and seed (``--workers`` processes, one torch thread
each), then prints the validation bpb per variant (mean +- std over seeds, and per seed) with the block
parameters and the final model's bpb on the whole test split, writes ``results.json`` and plots ``curves.png``
(bpb against step) and ``pareto.png`` (final bpb against block parameters) in ``--out``. Runs already finished in
``--out`` are read, not trained again. The split is ``data.split_seed``'s (default 0): every seed is scored on the
same validation and test text.
"""
from __future__ import annotations

import argparse
import dataclasses
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
    quiet = lambda s: None  # noqa: E731
    exp, t0 = build_experiment(cfg, run_dir, log=quiet), time.time()
    holder = {}
    build = exp.build_model
    exp.build_model = lambda: holder.setdefault("m", build())
    history = run_training(cfg, run_dir, log=quiet, experiment=exp)
    per_epoch, cap = -(-len(exp.train_set) // cfg.data.batch_size), cfg.train.max_steps or float("inf")
    steps = [min(h["epoch"] * per_epoch, cap) for h in history]
    minutes = round((time.time() - t0) / 60, 1)
    model, whole = holder["m"].eval(), dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_eval_tokens=None))
    scores = {}
    for split in ("val", "test"):  # the final model on the whole validation and test splits, whatever the curve's cap
        e = build_experiment(whole, run_dir, eval_split=split, log=quiet)
        scores[split] = (e.task.evaluate(model, e.loaders(whole.data)[1], torch.device("cpu"))["bpb"],
                         e.test_set.scored_tokens)
    return {**job, "block_params": model.block_parameter_count(), "bpb": scores["val"][0], "test_bpb": scores["test"][0],
            "split_seed": cfg.data.split_seed, "val_tokens": scores["val"][1], "test_tokens": scores["test"][1],
            "tokens_per_step": cfg.data.batch_size * cfg.model.block_size,
            "curve": [(s, h["bpb"]) for s, h in zip(steps, history)], "minutes": minutes}


def table(rows: list[dict]) -> str:
    lines = [f"{'variant':<10}{'block params':>14}{'val bpb mean +- std':>22}{'test bpb':>10}   val per seed"]
    dense = [r["bpb"] for r in rows if r["variant"] == "dense"]
    for v in dict.fromkeys(r["variant"] for r in rows):
        b = [r["bpb"] for r in rows if r["variant"] == v]
        std = statistics.stdev(b) if len(b) > 1 else 0.0
        rel = f"  ({100 * (statistics.mean(b) / statistics.mean(dense) - 1):+.2f}% vs dense)" if dense else ""
        params = next(r["block_params"] for r in rows if r["variant"] == v)
        test = [r["test_bpb"] for r in rows if r["variant"] == v and "test_bpb" in r]
        lines.append(f"{v:<10}{params:>14,}{statistics.mean(b):>14.4f} +- {std:.4f}"
                     f"{statistics.mean(test) if test else float('nan'):>10.4f}   "
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


def run_all(prefix: str, variants: list[str], seeds: list[int], workers: int, sets: list[str], out: Path,
            on_row=None) -> list[dict]:
    """Train every (variant, seed) not yet in ``out/results.json`` (``workers`` processes); rows in variant order.
    ``results.json`` is rewritten after every finished run, and ``on_row(rows)`` called."""
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["variant"], r["seed"]): r for r in json.loads((out / "results.json").read_text())} \
        if (out / "results.json").is_file() else {}
    jobs = [{"prefix": prefix, "variant": v, "seed": s, "sets": sets, "out": str(out)}
            for s in seeds for v in variants if (v, s) not in done]
    rows = list(done.values())
    with mp.get_context("spawn").Pool(workers) as pool:
        for row in pool.imap_unordered(train, jobs):
            rows.append(row)
            print(f"{row['variant']} seed {row['seed']}: val bpb {row['bpb']:.4f}, test {row['test_bpb']:.4f} "
                  f"({row['minutes']} min)", flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=1))
            if on_row:
                on_row(rows)
    order = {v: i for i, v in enumerate(variants)}
    return sorted(rows, key=lambda r: (order.get(r["variant"], 99), r["seed"]))


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
    rows = run_all(args.prefix, args.variants.split(","), [int(s) for s in args.seeds.split(",")], args.workers,
                   args.set, out)
    print(table(rows))
    plot(rows, out, f"{args.prefix}: validation bpb, mean over seeds {args.seeds}")


if __name__ == "__main__":
    main()
