"""Is a compressed MiniLM's embedding error a linear distortion? A least-squares map on the pooled embeddings.

    OMP_NUM_THREADS=1 lors compress --model minilm --budget 0.5 --out runs/s17/minilm_r1024
    OMP_NUM_THREADS=1 python benchmarks/minilm_linear_head.py runs/s17/minilm_r1024

Embeds the distillation pool's uncropped sentences (the training sentences and :func:`lors.data.text.extra_sentences`)
with the original and with the compressed model, fits ``W`` (D x D) by ridge regression toward the identity,
``min ||X W - Y||^2 + lam N/D ||W - I||^2`` (X: the compressed model's normalised embeddings, Y: the original's), and
scores ``normalise(X W)`` on the 1,000 held-out sentences as ``lors compress --model minilm`` does. Mean pooling is
linear, so ``W`` is realisable as one more D x D linear layer on the last token states (D^2 parameters, 147,456 for
MiniLM). If the map closes much of the gap, the error is a distortion of the space a cheap head can undo; if not,
it lies in which sentences end up near which, beyond any one linear map.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

RIDGES = (1e-3, 1e-2, 1e-1, 1.0)


def fit_map(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """``W`` minimising ``||x W - y||^2 + ridge N/D ||W - I||^2`` for rows ``x``, ``y`` (N, D)."""
    n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype)
    return torch.linalg.solve(x.T @ x + ridge * n / d * eye, x.T @ y + ridge * n / d * eye)


def main(argv=None) -> dict:
    import lors
    from lors.compression.evaluate import embed, embedding_agreement, token_batches
    from lors.compression.pretrained import load_encoder
    from lors.compression.run import held_out_sentences
    from lors.data.text import extra_sentences

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a folder of lors compress --model minilm")
    p.add_argument("--out", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    teacher, tokenizer = load_encoder("minilm", progress=False)
    student = lors.from_pretrained(args.model)
    train, held = held_out_sentences(0, 1000)
    pool = list(dict.fromkeys(list(train) + extra_sentences()))
    y_held, x_held = (embed(m, token_batches(tokenizer, held, 64)) for m in (teacher, student))
    y, x = (embed(m, token_batches(tokenizer, pool, 64)) for m in (teacher, student))
    rows = {"fit_sentences": len(pool), "start": embedding_agreement(y_held, x_held)}
    print(f"{len(pool):,} sentences to fit on; held-out, as compressed:", _short(rows["start"]), flush=True)
    for ridge in RIDGES:
        rows[f"ridge {ridge:g}"] = embedding_agreement(y_held, F.normalize(x_held @ fit_map(x, y, ridge), dim=-1))
        print(f"ridge {ridge:g}:", _short(rows[f"ridge {ridge:g}"]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def _short(row: dict) -> dict:
    return {k: round(v, 4) for k, v in row.items()}


if __name__ == "__main__":
    main()
