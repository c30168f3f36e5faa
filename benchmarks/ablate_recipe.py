"""Ablation of the LORS training recipe on the digits ViT: shared-weight lr scale x depth, and B init.

    python benchmarks/ablate_recipe.py --grid shared_lr --seeds 0,1,2 --workers 2 --out runs/ablation
    python benchmarks/ablate_recipe.py --grid rules --seeds 0,1,2,3,4 --workers 2 --out runs/ablation
    python benchmarks/ablate_recipe.py --grid b_init --seeds 0,1,2 --workers 2 --out runs/ablation
    python benchmarks/ablate_recipe.py --plot-only --out runs/ablation

Every run is the demo's recipe (40 epochs, AdamW lr 3e-3, 3 warm-up epochs + cosine) with one
setting changed; each worker uses one torch thread. Rows are appended to ``OUT/results.csv`` as runs
finish (a rerun skips rows already there). The script prints, per (depth, setting), the mean and std
of test top-1 over seeds, the ratio to dense, and writes ``OUT/shared_lr.png`` (top-1 vs scale).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

FIELDS = ["grid", "depth", "variant", "shared_lr_scale", "b_init_std", "seed", "top1", "block_params"]
SCALES = [1.0, 0.5, 0.25, 0.125, 0.0625]


def lors_groups(depth: int) -> tuple[list[int], list[int]]:
    """The demo's group schedule stretched to ``depth``: 2 groups in the last (attention) / first (MLP) quarter."""
    q = depth // 4
    return [1] * (depth - q) + [2] * q, [2] * q + [1] * (depth - q)


def run_config(depth: int, variant: str, scale, b_init_std: float, seed: int, epochs=None):
    from lors.cli.demo import demo_config

    cfg = demo_config("dense" if variant == "dense" else "lors", seed=seed)
    cfg.model.depth = depth
    if variant == "lors":
        cfg.model.attn_groups, cfg.model.mlp_groups = lors_groups(depth)
        cfg.model.b_init_std = b_init_std
    cfg.train.shared_lr_scale = scale
    cfg.train.progress = False
    if epochs is not None:
        cfg.train.epochs = epochs
    return cfg


def train_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from lors.cli.experiment import build_experiment, run_training
    from lors.models.vit import build_vit

    cfg = run_config(job["depth"], job["variant"], job["shared_lr_scale"], job["b_init_std"], job["seed"],
                     job.get("epochs"))
    run_dir = Path(job["out"]) / "runs" / job["key"]
    exp = build_experiment(cfg)
    model_holder = {}

    def build():
        model_holder["m"] = build_vit(cfg.model)
        return model_holder["m"]

    exp.build_model = build
    history = run_training(cfg, run_dir, log=lambda s: None, experiment=exp)
    row = {k: job[k] for k in FIELDS if k in job}
    row.update(top1=history[-1]["top1"], block_params=model_holder["m"].block_parameter_count())
    return row


def jobs_for(grid: str, seeds: list[int], out: str) -> list[dict]:
    jobs = []
    if grid == "shared_lr":
        for depth in (6, 12):
            for seed in seeds:
                jobs.append(dict(depth=depth, variant="dense", shared_lr_scale=1.0, b_init_std=0.0, seed=seed))
                for scale in SCALES:
                    jobs.append(dict(depth=depth, variant="lors", shared_lr_scale=scale, b_init_std=0.0, seed=seed))
    elif grid == "rules":
        for depth in (6, 12):
            for seed in seeds:
                for rule in ("1/sqrt(N)", "1/N"):
                    jobs.append(dict(depth=depth, variant="lors", shared_lr_scale=rule, b_init_std=0.0, seed=seed))
    elif grid == "b_init":
        for seed in seeds:
            for std in (0.0, 1e-3, 1e-2):
                jobs.append(dict(depth=12, variant="lors", shared_lr_scale="1/sqrt(N)", b_init_std=std, seed=seed))
    else:
        raise SystemExit(f"--grid must be shared_lr, rules or b_init, got {grid!r}")
    for j in jobs:
        j.update(grid=grid, out=out, key=f"{grid}_d{j['depth']}_{j['variant']}_s{j['shared_lr_scale']}_"
                                          f"b{j['b_init_std']}_seed{j['seed']}".replace("/", "_"))
    return jobs


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def summarize(rows: list[dict]) -> str:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["grid"], int(r["depth"]), r["variant"], r["shared_lr_scale"], r["b_init_std"]),
                          []).append(float(r["top1"]))
    lines = [f"{'grid':<10}{'depth':>6}  {'variant':<8}{'shared lr':>11}{'B std':>8}{'top-1 mean':>12}"
             f"{'std':>7}{'- dense':>9}{'seeds':>6}"]
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], str(k[3]), k[4])):
        grid, depth, variant, scale, std = key
        accs = groups[key]
        dense = groups.get((grid, depth, "dense", "1.0", "0.0")) or groups.get(("shared_lr", depth, "dense", "1.0", "0.0"))
        gap = statistics.mean(accs) - statistics.mean(dense) if dense else float("nan")
        lines.append(f"{grid:<10}{depth:>6}  {variant:<8}{scale:>11}{std:>8}{statistics.mean(accs):>12.2f}"
                     f"{statistics.stdev(accs) if len(accs) > 1 else 0:>7.2f}{gap:>+9.2f}{len(accs):>6}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import math

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for depth, color in ((6, "tab:blue"), (12, "tab:orange")):
        pts = {}
        for r in rows:
            if r["grid"] == "shared_lr" and int(r["depth"]) == depth and r["variant"] == "lors":
                pts.setdefault(float(r["shared_lr_scale"]), []).append(float(r["top1"]))
        if not pts:
            continue
        xs = sorted(pts)
        means = [statistics.mean(pts[x]) for x in xs]
        stds = [statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0 for x in xs]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=color, label=f"LORS, {depth} blocks")
        dense = [float(r["top1"]) for r in rows if r["grid"] == "shared_lr" and int(r["depth"]) == depth
                 and r["variant"] == "dense"]
        if dense:
            ax.axhline(statistics.mean(dense), color=color, ls="--", lw=1, label=f"dense, {depth} blocks")
        for rule, x, marker in (("1/sqrt(N)", 1 / math.sqrt(depth), "s"), ("1/N", 1 / depth, "*")):
            accs = [float(r["top1"]) for r in rows if r["grid"] == "rules" and int(r["depth"]) == depth
                    and r["shared_lr_scale"] == rule]
            if accs:
                ax.errorbar([x], [statistics.mean(accs)], yerr=[statistics.stdev(accs) if len(accs) > 1 else 0],
                            marker=marker, ms=11 if marker == "*" else 7, color=color, capsize=3, ls="none",
                            mfc="white", label=f"rule {rule}, {depth} blocks ({len(accs)} seeds)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("learning-rate scale of the shared weights (N = number of blocks sharing them)")
    ax.set_ylabel("test top-1 (%), mean ± std over seeds")
    ax.set_title("digits ViT: shared-weight learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="shared_lr")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--epochs", type=int, default=None, help="override the 40 epochs (smoke tests only)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    if not args.plot_only:
        done = {(r["grid"], r["depth"], r["variant"], r["shared_lr_scale"], r["b_init_std"], r["seed"])
                for r in read_rows(csv_path)}
        todo = [j for j in jobs_for(args.grid, [int(s) for s in args.seeds.split(",")], str(out))
                if (j["grid"], str(j["depth"]), j["variant"], str(j["shared_lr_scale"]), str(j["b_init_std"]),
                    str(j["seed"])) not in done]
        for j in todo:
            j["epochs"] = args.epochs
        print(f"{len(todo)} runs to do, {args.workers} workers", flush=True)
        with ProcessPoolExecutor(args.workers) as pool:
            for future in as_completed([pool.submit(train_one, j) for j in todo]):
                row = future.result()
                new = not csv_path.is_file()
                with open(csv_path, "a", newline="") as f:
                    w = csv.DictWriter(f, FIELDS)
                    if new:
                        w.writeheader()
                    w.writerow(row)
                print(" ".join(f"{k}={row[k]}" for k in FIELDS), flush=True)
    rows = read_rows(csv_path)
    print(summarize(rows))
    plot(rows, out / "shared_lr.png")
    print(f"plot: {out / 'shared_lr.png'}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
