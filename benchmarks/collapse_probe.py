"""Where does a compressed LM's greedy looping come from? Put parts of the original back and re-score the samples.

    OMP_NUM_THREADS=1 python benchmarks/collapse_probe.py runs/quality/sens80d [--per-block] [--prompts 16]

Loads a folder written by ``lors compress`` (``lors.from_pretrained``) and its base model, then, for each probe,
copies the original's linears back into a fresh copy of the compressed model (all attention projections, all MLP
projections, a third of the blocks, or, with ``--per-block``, one block at a time) and scores the greedy samples of
the prompts ``lors compress`` uses (:func:`lors.compression.evaluate.sample_prompts`: four fixed ones and
``--prompts`` sentence openings of pydoc and the held-out Bible each; 48 new tokens) as ``lors compress`` does:
distinct-2 of each continuation over the original's, and how many fall under one half ("collapsed"). A probe that
brings the ratio back to ~1 names the part whose compression makes the samples loop. Prints one row a probe and
writes ``collapse_probe[_as_is]_p<prompts>.json`` into the folder (``--as-is``: the compressed model only).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import lors
from lors.apply.budget import stack_linears
from lors.compression.evaluate import EVAL_PROMPTS, greedy_samples, repetition, sample_prompts
from lors.compression.pretrained import load_causal_lm
from lors.data.text import eval_text


def restored(compressed, original, paths: list[str]):
    """A copy of ``compressed`` with the original's modules at ``paths``."""
    model = copy.deepcopy(compressed)
    for p in paths:
        model.set_submodule(p, copy.deepcopy(original.get_submodule(p)))
    return model


def probes(container: str, targets: list[str], blocks: int, per_block: bool) -> dict[str, list[str]]:
    """Probe name -> module paths to restore: attention (the submodules whose name holds "attn" or "attention"),
    MLP (the rest), thirds of the stack, and optionally each block."""
    def paths(block_ids, kinds=None):
        return [f"{container}.{i}.{t}" for i in block_ids for t in targets if kinds is None or t.split(".")[0] in kinds]
    attention = {t.split(".")[0] for t in targets if any(a in t.split(".")[0] for a in ("attn", "attention"))}
    out = {"compressed as is": [], "attention restored (every block)": paths(range(blocks), attention),
           "MLP restored (every block)": paths(range(blocks), {t.split(".")[0] for t in targets} - attention)}
    third = -(-blocks // 3)
    for start in range(0, blocks, third):
        ids = range(start, min(start + third, blocks))
        out[f"blocks {ids[0]}-{ids[-1]} restored"] = paths(ids)
    if per_block:
        out.update({f"block {i} restored": paths([i]) for i in range(blocks)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="a folder written by lors compress")
    ap.add_argument("--base", default="smollm2", help="the base model it was compressed from")
    ap.add_argument("--per-block", action="store_true", help="also restore one block at a time")
    ap.add_argument("--as-is", action="store_true", help="score the compressed model only (no restoring)")
    ap.add_argument("--prompts", type=int, default=EVAL_PROMPTS,
                    help="sentence openings per held-out text besides the four fixed prompts (0: the four only)")
    args = ap.parse_args()
    if args.as_is and args.per_block:
        raise SystemExit("--as-is scores the compressed model only; it cannot be combined with --per-block")
    if args.prompts < 0:
        raise SystemExit(f"--prompts must be >= 0, got {args.prompts}")
    original, tokenizer = load_causal_lm(args.base, progress=False)
    compressed = lors.from_pretrained(args.folder).eval()
    container, targets, _ = stack_linears(original)
    blocks = len(original.get_submodule(container))
    prompts = sample_prompts([eval_text("pydoc"), eval_text("bible")], args.prompts)
    reference = greedy_samples(original, tokenizer, prompts)
    rows = []
    print(f"{'probe':<36}{'restored linears':>17}{'distinct-2 vs original':>24}{'collapsed':>11}{'s':>6}")
    chosen = {"compressed as is": []} if args.as_is else probes(container, targets, blocks, args.per_block)
    for name, paths in chosen.items():
        start = time.time()
        model = restored(compressed, original, paths)
        samples = greedy_samples(model, tokenizer, prompts)
        score = repetition(samples, reference, tokenizer, prompts)
        rows.append({"probe": name, "restored": len(paths), **score, "samples": samples})
        print(f"{name:<36}{len(paths):>17}{score['distinct2_vs_original']:>24.2f}"
              f"{score['collapsed_samples']:>6} of {len(prompts)}"
              f"{time.time() - start:>6.0f}", flush=True)
    name = f"collapse_probe{'_as_is' if args.as_is else ''}_p{len(prompts)}.json"
    (Path(args.folder) / name).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
