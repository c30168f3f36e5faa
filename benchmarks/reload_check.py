"""A compressed folder reloaded in a fresh process scores what ``lors compress`` reported when it made it.

    python benchmarks/reload_check.py runs/smol80 [--agreement]

Loads FOLDER with ``lors.from_pretrained`` (no base model), rebuilds the evaluation windows that the run scored
(its ``results.json`` and ``lors.json`` name the texts, window counts and seed), and prints the perplexities and the
greedy sample next to the recorded ones (exit 1 when a perplexity differs by more than 0.01 or the sample differs).
``--agreement`` also loads the base model the record names and prints the next-token agreement (top-1 %, KL) of
the compressed model with it on the same windows.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import lors
from lors.compression import greedy_sample, greedy_samples, next_token_agreement, perplexity
from lors.data.text import eval_text, token_windows


def main(folder: str, agreement: bool = False) -> int:
    import transformers

    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text())
    cfg = json.loads((folder / "lors.json").read_text())["compress_config"]
    row = results["rows"][-1]
    windows = results.get("evaluation", {}).get("windows", 40)  # 40: the default, for runs that did not record it
    model = lors.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    base = None
    if agreement:
        from lors.compression.pretrained import load_causal_lm
        source = json.loads((folder / "lors.json").read_text())["source"]
        base = load_causal_lm(source["base_model_name_or_path"], source.get("gguf_file"), progress=False)[0]
    ok = True
    for key, recorded in row.items():
        if not key.startswith("ppl_"):
            continue
        text = key[len("ppl_"):]
        ids = token_windows(tokenizer, eval_text(text, results["evaluation"].get("split_seed", cfg["seed"])), windows, cfg["window"])
        got = perplexity(model, ids, cfg["batch_size"])["ppl"]
        ok &= abs(got - recorded) <= 0.01
        extra = ""
        if base is not None:
            a = next_token_agreement(model, base, ids, cfg["batch_size"])
            extra = f"; next-token agreement with the base: top-1 {a['top1']:.2f} %, KL {a['kl']:.4f} nats/token"
        print(f"{text}: reloaded {got:.3f}, recorded {recorded:.3f}{extra}")
    recorded = results["samples"][row["model"]]  # a list (one per fixed prompt) since issue 29; one string before
    sample = greedy_samples(model, tokenizer) if isinstance(recorded, list) else greedy_sample(model, tokenizer)
    ok &= sample == recorded
    print(f"greedy sample, reloaded: {sample!r}\n               recorded: {recorded!r}")
    print("same" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], "--agreement" in sys.argv[2:]))
