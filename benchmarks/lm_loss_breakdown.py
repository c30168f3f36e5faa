"""Where a compressed LM loses to its original on an evaluation text: code lines against prose, and the tail beyond
the original's top-k.

    OMP_NUM_THREADS=1 python benchmarks/lm_loss_breakdown.py runs/spill/mod80_470_5e-5 --windows 64

On the evaluation windows ``lors compress`` scores (``--windows`` of 256 tokens spread evenly over ``--text``,
default pydoc), for every predicted token:

* the KL from the original's next-token distribution to the model's, split by the line the predicted token sits
  on: *code* (indented by 3 spaces or a tab: examples, doctests, grammar rules) or *prose*;
* for k in ``KS``: the part of the KL that a top-k cache sees (the original's k most likely tokens plus one bucket
  for the rest, the loss ``lors distill --topk`` trains on), and the share of the actual next tokens outside the
  original's top-k with the part of the model's extra loss (its NLL minus the original's) that they carry. A
  negative part means the model gives those tokens *more* probability than the original does.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

KS = (64, 256, 1024)


def code_positions(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """(T,) bool: whether each token of ``ids`` lies on a code line (its line so far starts with 3 spaces or a
    tab)."""
    text, flags = "", []
    for i in range(len(ids)):
        text += tokenizer.decode(ids[i:i + 1])
        line = text.rsplit("\n", 1)[-1]
        flags.append(line.startswith("   ") or line.startswith("\t"))
    return torch.tensor(flags)


def breakdown(p: torch.Tensor, q: torch.Tensor, targets: torch.Tensor, code: torch.Tensor,
              ks: tuple[int, ...] = KS) -> dict:
    """Sums over N predicted tokens. ``p`` / ``q``: (N, V) log-probabilities of the original / the model;
    ``targets`` (N,) the actual next tokens; ``code`` (N,) bool. Returns token counts, KL sums by kind of line, the
    model's extra NLL, and per k the top-k-plus-bucket KL, the targets outside the top-k and their extra NLL."""
    kl = (p.exp() * (p - q)).sum(-1)
    extra = p.gather(-1, targets[:, None]).squeeze(1) - q.gather(-1, targets[:, None]).squeeze(1)
    out = {"tokens": len(p), "code_tokens": int(code.sum()), "kl": float(kl.sum()), "kl_code": float(kl[code].sum()),
           "extra_nll": float(extra.sum()), "topk": {}}
    for k in ks:
        top = p.topk(k, -1).indices
        pk, qk = p.gather(-1, top), q.gather(-1, top)
        rest_p = torch.log1p(-pk.exp().sum(-1).clamp(max=1 - 1e-7))
        rest_q = torch.log1p(-qk.exp().sum(-1).clamp(max=1 - 1e-7))
        seen = (pk.exp() * (pk - qk)).sum(-1) + rest_p.exp() * (rest_p - rest_q)
        outside = ~(top == targets[:, None]).any(-1)
        out["topk"][k] = {"kl": float(seen.sum()), "targets_outside": int(outside.sum()),
                          "extra_nll_outside": float(extra[outside].sum())}
    return out


def add(total: dict, part: dict) -> dict:
    """Sum two :func:`breakdown` results."""
    if not total:
        return part
    summed = {k: total[k] + part[k] for k in total if k != "topk"}
    summed["topk"] = {k: {f: total["topk"][k][f] + part["topk"][k][f] for f in part["topk"][k]}
                      for k in part["topk"]}
    return summed


def main(argv=None) -> dict:
    import lors
    from lors.compression.export import read_meta
    from lors.compression.pretrained import load_causal_lm
    from lors.data.text import eval_text, token_windows

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="compressed SmolLM2 folders (lors compress / lors distill --out)")
    ap.add_argument("--text", default="pydoc", help="evaluation text: pydoc, bible or a UTF-8 file")
    ap.add_argument("--windows", type=int, default=64, help="windows of 256 tokens spread over the text")
    ap.add_argument("--out", default=None, help="write the sums as JSON here")
    args = ap.parse_args(argv)
    try:  # each folder's lors.json, with the library's one-line error
        for folder in args.folders:
            read_meta(folder)
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    teacher, tokenizer = load_causal_lm("smollm2", progress=False)
    windows = token_windows(tokenizer, eval_text(args.text), args.windows, 256)
    code = torch.stack([code_positions(tokenizer, w) for w in windows])[:, 1:]
    models = {folder: lors.from_pretrained(folder).eval() for folder in args.folders}
    results = {folder: {} for folder in args.folders}
    with torch.no_grad():  # batch by batch: the original's log-probs of one batch at a time (not 3 GB of them)
        for i in range(0, len(windows), 4):
            p = teacher(input_ids=windows[i:i + 4]).logits.float().log_softmax(-1)[:, :-1]
            v = p.shape[-1]
            targets, on_code = windows[i:i + 4, 1:].reshape(-1), code[i:i + 4].reshape(-1)
            for folder, model in models.items():
                q = model(input_ids=windows[i:i + 4]).logits.float().log_softmax(-1)[:, :-1]
                results[folder] = add(results[folder], breakdown(p.reshape(-1, v), q.reshape(-1, v), targets,
                                                                 on_code))
    for folder, total in results.items():
        n, prose = total["tokens"], total["tokens"] - total["code_tokens"]
        print(f"{folder}: KL {total['kl'] / n:.4f} a token, extra NLL {total['extra_nll'] / n:.4f} "
              f"(x{math.exp(total['extra_nll'] / n):.3f} perplexity)")
        code_kl, prose_kl = total["kl_code"] / total["code_tokens"], (total["kl"] - total["kl_code"]) / prose
        print(f"  code lines: {100 * total['code_tokens'] / n:.1f} % of tokens, KL {code_kl:.4f}; "
              f"prose: KL {prose_kl:.4f}")
        for k, t in total["topk"].items():
            print(f"  top-{k} + bucket: {100 * t['kl'] / total['kl']:.0f} % of the KL; "
                  f"{100 * t['targets_outside'] / n:.1f} % of the targets outside it, carrying "
                  f"{100 * t['extra_nll_outside'] / total['extra_nll']:.0f} % of the extra NLL")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
