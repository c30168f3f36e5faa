"""The depth study's crossover: measured where the curves cross, extrapolated (log tokens) where they have not."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lm_depth import crossover, mean_curve, pair_line  # noqa: E402


def test_a_measured_crossing_is_interpolated():
    a = [(1e6, 3.0), (2e6, 2.6), (3e6, 2.2)]
    b = [(1e6, 2.5), (2e6, 2.5), (3e6, 2.5)]
    tokens, how = crossover(a, b)
    assert how == "measured" and tokens == pytest.approx(2.25e6)  # gap 0.1 -> -0.3 between 2 M and 3 M


def test_a_gap_closing_in_log_tokens_is_extrapolated_and_a_widening_one_is_not():
    ts = [1e6 * 2 ** i for i in range(9)]
    closing = [(t, 2.0 + 0.5 - 0.05 * math.log2(t / 1e6)) for t in ts]  # gap 0.5 - 0.05 log2(t / 1 M): 0 at 1024 M
    flat = [(t, 2.0) for t in ts]
    tokens, how = crossover(closing, flat)
    assert how == "extrapolated" and tokens == pytest.approx(1e6 * 2 ** 10, rel=1e-6)
    widening = [(t, 2.0 + 0.1 * math.log2(t / 1e6) + 0.1) for t in ts]
    assert crossover(widening, flat) == (None, "not converging")
    assert crossover(flat, widening)[1] == "already below"


def test_mean_curve_averages_seeds_on_the_token_axis():
    rows = [{"variant": "v", "tokens_per_step": 10, "curve": [(1, 3.0), (2, 2.0)]},
            {"variant": "v", "tokens_per_step": 10, "curve": [(1, 1.0), (2, 4.0), (3, 9.0)]}]
    assert mean_curve(rows, "v") == [(10, 2.0), (20, 3.0)]


def test_pair_line_gives_the_final_gap_and_names_a_far_extrapolation():
    ts = [2 ** i for i in range(9)]  # tokens_per_step 1e6: 1 M .. 256 M tokens

    def row(variant, bpbs, final):
        return {"variant": variant, "tokens_per_step": 1e6, "curve": list(zip(ts, bpbs)), "bpb": final}

    flat = row("b", [2.0] * 9, 2.0)
    near = row("a", [2.0 + 0.5 - 0.05 * math.log2(t) for t in ts], 2.2)  # crosses at 1024 M: 4x the run
    far = row("a", [2.0 + 0.5 - 0.01 * math.log2(t) for t in ts], 2.5)  # crosses at 2^50 M
    assert pair_line([near, flat], "a", "b") == "a vs b: +10.00 % val bpb at the end; a passes b: 1024.0 M tokens (extrapolated)"
    assert "beyond 10x the run's 256.0 M tokens" in pair_line([far, flat], "a", "b")
    measured = row("a", [2.5, 2.1, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3], 1.5)
    assert pair_line([measured, flat], "a", "b").endswith("a passes b: 3.0 M tokens (measured)")  # gap +0.1 at 2 M, -0.1 at 4 M
