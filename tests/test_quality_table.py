"""The quality table reads ``lors compress`` results as written: ratios to the original, and loop counts out of the
run's own number of prompts (four for runs from before the prompts were recorded)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality_table import load, table  # noqa: E402


def write_run(folder: Path, name: str, prompts):
    rows = [{"model": "original", "fraction": 1.0, "ppl_pydoc": 10.0, "distinct2_vs_original": 1.0,
             "collapsed_samples": 0, "collapsed": False},
            {"model": "lct (80%)", "fraction": 0.8, "ppl_pydoc": 12.5, "top1_pydoc": 70.0, "seconds": 90,
             "distinct2_vs_original": 0.6, "collapsed_samples": 3, "collapsed": True}]
    evaluation = {"texts": ["pydoc"], "windows": 40} | ({"prompts": prompts} if prompts else {})
    (folder / name).mkdir()
    (folder / name / "results.json").write_text(json.dumps({"rows": rows, "evaluation": evaluation,
                                                            "peak_memory_gb": 5.0}))


def test_quality_table_ratios_and_loop_counts(tmp_path):
    write_run(tmp_path, "a_new", [f"prompt {i}" for i in range(36)])
    write_run(tmp_path, "b_old", None)
    out = table(load(tmp_path))
    lines = out.splitlines()
    new, old = [next(line for line in lines if line.startswith(f"| {n} ")) for n in ("a_new", "b_old")]
    assert "12.50 (x1.25)" in new and "0.60, collapsed 3 of 36" in new and "| 1.5 |" in new
    assert "0.60, collapsed 3 of 4" in old
    assert "'prompts': 36" in out and "prompt 0" not in out  # the footer counts prompts, it does not list them
