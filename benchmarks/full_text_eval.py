"""Perplexity of compressed LMs on every window of the evaluation texts, not a spread of 64.

    OMP_NUM_THREADS=1 python benchmarks/full_text_eval.py runs/quality/sens90 runs/quality/sens80d [--base smollm2]

``lors compress`` scores each row on ``--eval-windows`` windows spread over each text (64 in BENCHMARKS.md) because
it also runs the original for next-token agreement; on 2 cores the whole texts (pydoc 441 and the held-out Bible 896
windows of 256 SmolLM2 tokens) take ~15-30 min per model and text on one thread. This script scores saved folders
(``lors.from_pretrained``) and their base model on every consecutive window (:func:`lors.data.text.token_windows`
with ``"all"``) and prints perplexity and the ratio to the base model per text.

Every score is cached, keyed by the text's and the model's SHA-256 and the window length: the base model's in
``~/.cache/lors/full-text/`` (scored once, shared by all folders), a folder's in its ``full_text.json``. A rerun
reads the caches, so two processes can score different folders side by side (run the base alone first, with no
folders, or both will score it). Perplexity is exp of the summed next-token loss over all scored targets divided by
their count (each window scored on its own, ``T - 1`` predictions a window), i.e. one average over the whole text.
Next-token agreement and the samples stay on ``lors compress``'s windows: they need the original run beside every
folder, which would double the cost.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path
from typing import Callable

import torch

TEXTS = ("pydoc", "bible")


def whole_text_loss(model: torch.nn.Module, windows: torch.Tensor, chunk: int = 32, batch_size: int = 8,
                    log: Callable[[str], None] = print, label: str = "") -> dict:
    """Summed next-token loss of ``model`` over every window (N, T), scored ``chunk`` windows at a time with a
    progress line per chunk: ``{"loss": mean nats per target, "ppl", "targets", "windows", "seconds"}``."""
    from lors.tasks.lm import perplexity

    start, total, targets = time.time(), 0.0, 0
    for i in range(0, len(windows), chunk):
        part = windows[i:i + chunk]
        n = part[:, 1:].numel()
        total += perplexity(model, part, batch_size)["loss"] * n
        targets += n
        done = min(i + chunk, len(windows))
        log(f"  {label}{done}/{len(windows)} windows, running ppl {math.exp(total / targets):.3f}, "
            f"{time.time() - start:.0f} s")
    loss = total / targets
    return {"loss": loss, "ppl": math.exp(loss), "targets": targets, "windows": len(windows),
            "seconds": round(time.time() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", help="folders written by lors compress (none: score the base model only)")
    ap.add_argument("--base", default="smollm2", help="the base model the folders were compressed from")
    ap.add_argument("--texts", default=",".join(TEXTS), help="evaluation texts: pydoc, bible or UTF-8 files")
    ap.add_argument("--window", type=int, default=256, help="tokens a window (lors compress's default 256)")
    args = ap.parse_args()
    folders = [Path(f) for f in args.folders]
    for f in folders:
        if not (f / "lors_model.safetensors").is_file():
            raise SystemExit(f"{f} is not a folder written by lors compress (no lors_model.safetensors)")
    if args.window < 2:
        raise SystemExit(f"--window must be >= 2, got {args.window}")

    import lors
    from lors.compression.pretrained import base_source, cache_dir, cached_json, files_sha256, load_causal_lm
    from lors.data.text import eval_text, token_windows

    base, tokenizer = load_causal_lm(args.base, progress=False)
    base_sha = base_source(args.base)["sha256"]
    texts = {t: eval_text(t) for t in args.texts.split(",")}
    windows = {t: token_windows(tokenizer, s, "all", args.window) for t, s in texts.items()}
    text_keys = {t: {"text": t, "text_sha256": hashlib.sha256(s.encode()).hexdigest(), "window": str(args.window)}
                 for t, s in texts.items()}
    print("whole texts: " + ", ".join(f"{t} {len(w)} x {args.window} tokens ({len(texts[t]):,} characters)"
                                      for t, w in windows.items()), flush=True)

    def log(line):
        print(line, flush=True)

    reference = {t: cached_json(cache_dir() / "full-text" / f"{args.base}.json", {"model": base_sha, **k},
                                 lambda t=t: whole_text_loss(base, windows[t], log=log, label=f"{args.base} {t}: "))
                 for t, k in text_keys.items()}
    rows = [(args.base, reference)]
    for f in folders:
        model, sha = lors.from_pretrained(f).eval(), files_sha256([f / "lors_model.safetensors"])
        rows.append((str(f), {t: cached_json(f / "full_text.json", {"model": sha, **k},
                                              lambda t=t: whole_text_loss(model, windows[t], log=log,
                                                                          label=f"{f.name} {t}: "))
                              for t, k in text_keys.items()}))
    print(f"\n{'model':<32}" + "".join(f"{t + ' ppl (x)':>22}" for t in texts))
    for name, scores in rows:
        print(f"{name:<32}" + "".join(f"{scores[t]['ppl']:>13.3f} (x{scores[t]['ppl'] / reference[t]['ppl']:.3f})"
                                      for t in texts))
    print("targets scored per text: " + ", ".join(f"{t} {reference[t]['targets']:,}" for t in texts))


if __name__ == "__main__":
    main()
