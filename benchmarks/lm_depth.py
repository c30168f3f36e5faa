"""The depth study: when does a 12-block GPT pass a shallow dense one of the same block parameters?

    nohup python benchmarks/lm_depth.py --seeds 0,1,2 --workers 2 --out runs/depth64 > runs/depth64.log &

Trains ``configs/depth64_<variant>.yaml`` (byte-level GPT on the KJV, 64 wide; ~10x the tokens of the
``kjv_gpt`` configs) for dense-12, dense-3 (parameter-matched to LORS-12 at rank 8 at this width), LORS-12 at
ranks 8 and 32 and CoLA-12 with dense end blocks, over seeds on the fixed split (``data.split_seed`` 0), through
:func:`lm_compare.run_all` (finished runs in ``--out`` are kept; ``results.json`` grows as runs finish). Prints the
whole-split validation and test bpb per variant, plots validation bpb against training tokens (``tokens.png``), and
says where, in tokens, dense-12 passes dense-3 and LORS-12 passes dense-3: the first crossing of the seed-mean
curves, or, when they have not crossed, an extrapolation of their gap (linear in log tokens over the last third of
the run), marked as such.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_compare import run_all, table  # noqa: E402

VARIANTS = ("dense12", "dense3", "lors8", "lors32", "cola18ends")
PAIRS = (("dense12", "dense3"), ("lors8", "dense3"), ("lors32", "dense3"), ("lors8", "dense12"))


def mean_curve(rows: list[dict], variant: str) -> list[tuple[float, float]]:
    """(training tokens, seed-mean validation bpb) after every epoch of ``variant``'s runs."""
    runs = [r for r in rows if r["variant"] == variant]
    length = min(len(r["curve"]) for r in runs)
    return [(runs[0]["curve"][i][0] * runs[0]["tokens_per_step"], statistics.mean(r["curve"][i][1] for r in runs))
            for i in range(length)]


def crossover(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> tuple[float | None, str]:
    """Tokens at which curve ``a`` first drops below curve ``b`` (interpolated), and how it was found:
    ``"measured"``, ``"extrapolated"`` (gap linear in log tokens over the last third), ``"already below"`` or
    ``"not converging"``."""
    gaps = [(t, x - y) for (t, x), (_, y) in zip(a, b)]
    if gaps and gaps[0][1] < 0:
        return gaps[0][0], "already below"
    for (t0, g0), (t1, g1) in zip(gaps, gaps[1:]):
        if g0 >= 0 > g1:
            return t0 + (t1 - t0) * g0 / (g0 - g1), "measured"
    tail = gaps[len(gaps) * 2 // 3:]
    if len(tail) < 2:
        return None, "not converging"
    xs, ys = [math.log(t) for t, _ in tail], [g for _, g in tail]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    if slope >= 0:
        return None, "not converging"
    return math.exp(mx - my / slope), "extrapolated"


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for v in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == v]
        curve = mean_curve(rows, v)
        ax.plot([t / 1e6 for t, _ in curve], [b for _, b in curve], marker="o", ms=2,
                label=f"{v} ({runs[0]['block_params']:,} block params, {len(runs)} seed{'s' * (len(runs) > 1)})")
    ax.set(xscale="log", xlabel="training tokens (millions)", ylabel="validation bits per byte",
           title="KJV bytes, 64 wide: validation bpb (seed mean) against tokens")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(out / "tokens.png", dpi=120)
    plt.close(fig)


def pair_line(rows: list[dict], a: str, b: str) -> str:
    """``a`` against ``b``: the gap of the seed-mean whole-split validation bpb at the end, and where ``a``'s curve
    passes ``b``'s. An extrapolation beyond 10x the run's tokens is named as such, not given as a number."""
    end = {v: statistics.mean(r["bpb"] for r in rows if r["variant"] == v) for v in (a, b)}
    curve = mean_curve(rows, a)
    tokens, how = crossover(curve, mean_curve(rows, b))
    if how == "extrapolated" and tokens > 10 * curve[-1][0]:
        where = f"beyond 10x the run's {curve[-1][0] / 1e6:.1f} M tokens (extrapolated; no prediction that far)"
    else:
        where = f"{tokens / 1e6:.1f} M tokens ({how})" if tokens else how
    return f"{a} vs {b}: {100 * (end[a] / end[b] - 1):+.2f} % val bpb at the end; {a} passes {b}: {where}"


def report(rows: list[dict]) -> str:
    present = set(r["variant"] for r in rows)
    return "\n".join([table(rows), ""] + [pair_line(rows, a, b) for a, b in PAIRS if a in present and b in present])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ap.add_argument("--out", default="runs/depth64")
    args = ap.parse_args()
    out = Path(args.out)
    rows = run_all("depth64", args.variants.split(","), [int(s) for s in args.seeds.split(",")], args.workers,
                   args.set, out, on_row=lambda rows: plot(rows, out))
    print(report(rows))
    plot(rows, out)
    (out / "report.txt").write_text(report(rows) + "\n")


if __name__ == "__main__":
    main()
