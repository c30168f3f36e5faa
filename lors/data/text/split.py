"""The one rule that splits text into training, validation and test: whole documents, a seed of its own.

:func:`split_documents` orders the documents by a seeded shuffle and fills the test split, then the validation
split, with whole documents until each holds its share of the characters; the rest trains. The seed is
``data.split_seed`` (default :data:`SPLIT_SEED`), never the training seed: runs with different ``train.seed``
score the same held-out text. Every text user goes through it: the GPT's corpora, the held-out Bible books and the
calibration side of the pretrained-LM sources, and the sentence encoders' sentences.
"""
from __future__ import annotations

import random

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0  # the default split seed of every text and image data set


def split_documents(docs: dict[str, str], val_fraction: float, test_fraction: float,
                    seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """``{split: [document names]}``: documents in a seeded order, the first ones to test and validation until
    each holds its fraction of the characters, the rest to training. A single document cannot go whole to one
    side: each split then names it, and :func:`split_text` cuts it by position."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) and leave "
                         "text for training (sum < 1)")
    names = sorted(docs)
    if len(names) == 1:
        return {s: names for s in SPLITS}
    random.Random(seed).shuffle(names)
    total = sum(len(docs[n]) for n in names)
    out: dict[str, list[str]] = {"test": [], "val": [], "train": []}
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        held = 0
        while names and held < fraction * total and len(names) > 1:
            held += len(docs[names[0]])
            out[split].append(names.pop(0))
    out["train"] = names
    return out


def split_text(docs: dict[str, str], split: str, val_fraction: float, test_fraction: float,
               seed: int = SPLIT_SEED) -> str:
    """The text of one split (documents in name order, joined by blank lines); one document is cut by position
    (the first ``1 - val - test`` of it trains, then validation, then test)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    names = split_documents(docs, val_fraction, test_fraction, seed)[split]
    if len(docs) == 1:
        text = docs[names[0]]
        a = int(len(text) * (1 - val_fraction - test_fraction))
        b = int(len(text) * (1 - test_fraction))
        return {"train": text[:a], "val": text[a:b], "test": text[b:]}[split]
    return "\n\n".join(docs[n] for n in sorted(names))
