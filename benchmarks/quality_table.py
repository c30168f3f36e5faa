"""Collect ``lors compress --out`` runs into one table: method x kept fraction x stage -> held-out perplexity.

    python benchmarks/quality_table.py runs/quality            # every */results.json under the folder

Each run folder holds the ``results.json`` that ``lors compress --model smollm2 ... --out FOLDER`` wrote; its rows
(original, compressed, + distillation) are printed with the perplexity ratio to the original on every evaluation
text, next-token agreement with the original (top-1 %, KL), the greedy sample's distinct-2 against the original's
(``collapsed k of N``: k of the run's N prompts under half), minutes and the run's peak memory. Prints Markdown;
nothing is recomputed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(folder: Path) -> list[dict]:
    runs = []
    for path in sorted(folder.glob("*/results.json")):
        data = json.loads(path.read_text())
        data["name"] = path.parent.name
        runs.append(data)
    if not runs:
        raise SystemExit(f"no */results.json under {folder}")
    return runs


def table(runs: list[dict]) -> str:
    texts = [k[4:] for k in runs[0]["rows"][0] if k.startswith("ppl_")]
    head = ["run", "stage", "kept"] + [f"ppl {t} (x)" for t in texts] + [f"top-1 {t}" for t in texts] + \
        ["distinct-2", "min", "peak GB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        original, prompts = run["rows"][0], len(run.get("evaluation", {}).get("prompts", ())) or 4  # older: 4
        for r in run["rows"][1:]:
            ppl = [f"{r[f'ppl_{t}']:.2f} (x{r[f'ppl_{t}'] / original[f'ppl_{t}']:.2f})" for t in texts]
            top1 = [f"{r.get(f'top1_{t}', float('nan')):.1f} %" for t in texts]
            d2 = f"{r['distinct2_vs_original']:.2f}" + (f", collapsed {r['collapsed_samples']} of {prompts}"
                                                         if r.get("collapsed") else "")
            minutes = f"{r.get('seconds', 0) / 60:.1f}"
            lines.append("| " + " | ".join([run["name"], r["model"], f"{100 * r['fraction']:.1f} %", *ppl, *top1, d2,
                                            minutes, f"{run.get('peak_memory_gb', float('nan')):.1f}"]) + " |")
    base = runs[0]["rows"][0]
    lines.append("")
    evaluation = {k: (len(v) if k == "prompts" else v) for k, v in runs[0].get("evaluation", {}).items()}
    lines.append("original: " + ", ".join(f"{t} {base[f'ppl_{t}']:.2f}" for t in texts) + f"; evaluation {evaluation}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    print(table(load(p.parse_args(argv).folder)))


if __name__ == "__main__":
    main()
