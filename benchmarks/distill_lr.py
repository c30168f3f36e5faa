"""Distillation learning rate on a saved compressed LM: which lr recovers most in a fixed number of steps.

    OMP_NUM_THREADS=1 python benchmarks/distill_lr.py runs/quality/mod80 --lr 3e-4 --steps 120 --out runs/dlr/mod80_3e-4

Loads a folder written by ``lors compress --out`` (``lors.from_pretrained``) and its base model, then runs the same
distillation ``lors compress --distill-steps`` runs (:func:`lors.compression.run._distill_lm`: cached top-k teacher
log-probs, KL, warm-up + cosine, embeddings frozen) with the learning rate given, and scores the student before and
after on the evaluation windows ``lors compress`` uses (perplexity and next-token agreement per text). One learning
rate a process, so two can run side by side on two cores; each writes ``results.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    import lors
    from lors.compression import CompressConfig
    from lors.compression.evaluate import next_token_agreement
    from lors.compression.pretrained import base_source, load_causal_lm
    from lors.compression.run import EVAL_TEXTS, _distill_lm
    from lors.data.text import calibration_text, eval_text, token_windows
    from lors.tasks.lm import perplexity

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="a compressed model folder (lors compress --out)")
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--topk", type=int, default=64, help="cached teacher top-k (0: full logits every step)")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--base", default="smollm2")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.steps <= 0 or args.lr <= 0:
        p.error(f"--steps and --lr must be positive, got {args.steps} and {args.lr}")

    meta = Path(args.folder) / "lors.json"
    recorded = json.loads(meta.read_text()).get("compress_config") if meta.is_file() else None
    if not recorded:
        p.error(f"{args.folder} has no lors.json with a compress_config: give a folder written by lors compress --out")
    saved = CompressConfig.from_dict(recorded)
    model = lors.from_pretrained(args.folder)
    cfg = CompressConfig(**{**saved.to_dict(), "distill_steps": args.steps, "lr": args.lr,
                            "distill_topk": args.topk or None}).resolve("lm")
    teacher, tokenizer = load_causal_lm(args.base, progress=False)
    windows = {t: token_windows(tokenizer, eval_text(t), args.eval_windows, cfg.window) for t in EVAL_TEXTS}

    def score(m) -> dict:
        row = {}
        for t, w in windows.items():
            row[f"ppl_{t}"] = round(perplexity(m, w, cfg.batch_size)["ppl"], 3)
            agree = next_token_agreement(m, teacher, w, cfg.batch_size)
            row[f"top1_{t}"], row[f"kl_{t}"] = round(agree["top1"], 2), round(agree["kl"], 4)
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        return row

    base = {t: round(perplexity(teacher, w, cfg.batch_size)["ppl"], 3) for t, w in windows.items()}
    print(f"original: {base}", flush=True)
    before = score(model)
    start = time.time()
    history = _distill_lm(model, teacher, tokenizer, calibration_text(cfg.calibration), cfg, args.out, False, False,
                          print, base_source(args.base)["sha256"] if cfg.distill_topk else None)
    minutes = (time.time() - start) / 60
    after = score(model)
    result = {"folder": args.folder, "lr": args.lr, "steps": args.steps, "topk": args.topk, "original": base,
              "before": before, "after": after, "minutes": round(minutes, 1), "history": history,
              "ratios_after": {t: round(after[f"ppl_{t}"] / base[t], 3) for t in base}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2))
    print(f"lr {args.lr}: {result['ratios_after']} after {args.steps} steps ({minutes:.1f} min)", flush=True)
    return result


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
