"""Do two versions of lors train to the same numbers? The determinism check of a behaviour-preserving change.

    python benchmarks/same_numbers.py run --code OLD_TREE --out runs/before --legacy-keys   # lors 0.1 key names
    python benchmarks/same_numbers.py run --code .        --out runs/after
    python benchmarks/same_numbers.py compare runs/before runs/after

``run`` executes, with ``OLD_TREE`` (a checkout's root) first on ``PYTHONPATH``: ``lors demo --seeds 0``
(dense, LORS and LCT ViTs on digits, 40 epochs), the AdaMixer shapes detector with the dense and the LORS
decoder for 2 epochs on a 160/40-image shapes set, and a 6-epoch digits LCT run that exercises the gradual
schedule, re-projection, Frobenius decay and the factor learning rate, and ``lors.distill`` of a small MLP with
dropout (25 steps in chunks of 10, so the last chunk is partial). ``compare`` checks that every
metric of every epoch in every ``log.csv`` is identical (timing columns aside) and prints one line per run.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

TIMING = {"epoch_time", "samples_per_s"}
LCT_RUN = {"lct.warmup_epochs": "1", "lct.ramp_epochs": "2", "lct.reproject_every": "20",
           "lct.reproject_epsilon": "0.9", "lct.frobenius_decay": "0.01", "train.factor_lr_scale": "2"}
LEGACY = {"lct.warmup_epochs": "train.lct_warmup_epochs", "lct.ramp_epochs": "train.lct_ramp_epochs",
          "lct.reproject_every": "train.lct_reproject_every", "lct.reproject_epsilon": "train.lct_reproject_epsilon",
          "lct.frobenius_decay": "train.lct_frobenius_decay", "train.factor_lr_scale": "train.lct_lr_scale"}


def commands(code: Path, legacy: bool) -> dict[str, list[str]]:
    det = ["--set", "train.epochs=2", "--set", "data.root=data/shapes", "--no-progress"]
    lct = [a for k, v in LCT_RUN.items() for a in ("--set", f"{LEGACY[k] if legacy else k}={v}")]
    return {
        "shapes": ["make-shapes", "data/shapes", "--train", "160", "--val", "40", "--size", "128", "--seed", "0"],
        "det_lors": ["train", str(code / "configs/adamixer_shapes_lors.yaml"), "--output-dir", "det_lors", *det],
        "det_dense": ["train", str(code / "configs/adamixer_shapes_dense.yaml"), "--output-dir", "det_dense", *det],
        "demo": ["demo", "--seeds", "0", "--out", "demo", "--no-progress"],
        "lct_sched": ["train", str(code / "configs/digits_vit_lct.yaml"), "--set", "train.epochs=6", *lct,
                      "--output-dir", "lct_sched", "--no-progress"],
    }


DISTILL = """
import csv, sys, torch, lors
from torch import nn
torch.manual_seed(0)
net = lambda: nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 8))
teacher, student = net(), net()
batches = [torch.randn(4, 3, 8) for _ in range(5)]
rows = lors.distill(student, teacher, batches, steps=25, lr=3e-3, checkpoint_every=10, loss="mse", progress=False,
                    log=lambda s: None)
with open("distill/log.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["epoch", "train_loss", "weight_sum"])
    total = float(sum(p.detach().double().sum() for p in student.parameters()))
    w.writerows([i + 1, r.get("train_loss", r.get("loss")), f"{total:.9g}"] for i, r in enumerate(rows))
"""


def run(code: Path, out: Path, legacy: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(code.resolve()))
    for name, args in commands(code.resolve(), legacy).items():
        print(f"{name}: lors {' '.join(args)}", flush=True)
        with open(out / f"{name}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "lors.cli", *args], cwd=out, env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
    (out / "distill").mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-c", DISTILL], cwd=out, env=env, check=True)


def compare(before: Path, after: Path) -> bool:
    ok = True
    for b in sorted(before.rglob("log.csv")):
        a = after / b.relative_to(before)
        if not a.is_file():
            print(f"MISSING    {a}")
            ok = False
            continue
        rb, ra = list(csv.DictReader(open(b))), list(csv.DictReader(open(a)))
        cols = [k for k in rb[0] if k not in TIMING]
        diffs = [(i + 1, k, x[k], y.get(k)) for i, (x, y) in enumerate(zip(rb, ra)) for k in cols if x[k] != y.get(k)]
        same = len(rb) == len(ra) and not diffs
        ok &= same
        last = " ".join(f"{k}={ra[-1][k]}" for k in cols if k not in ("epoch", "params"))
        print(f"{'identical' if same else 'DIFFERENT'}  {b.parent.relative_to(before)}: {len(rb)} epochs x "
              f"{len(cols)} columns; last epoch {last}")
        for d in diffs[:5]:
            print("    epoch, column, before, after:", d)
    print("ALL IDENTICAL" if ok else "DIFFERENCES FOUND")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--code", type=Path, required=True, help="root of the lors tree to run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--legacy-keys", action="store_true", help="lors 0.1 config keys (train.lct_*)")
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.what == "run":
        run(args.code, args.out, args.legacy_keys)
        return 0
    return 0 if compare(args.before, args.after) else 1


if __name__ == "__main__":
    sys.exit(main())
