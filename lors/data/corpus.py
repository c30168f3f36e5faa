"""Text for language models: real corpora on the machine, split by document, as fixed-length token chunks.

Sources (``data.corpus``):

* ``pydoc``: Python's own reference text (``pydoc_data.topics``, ~465 K characters, in every CPython);
  a document is one topic.
* ``files``: every UTF-8 ``*.txt`` file under ``data.root`` (or the one file it names); a document is a file.

Documents go whole to one split (:func:`split_documents`, seeded), so no validation or test text shares a
passage with training. Tokens are bytes (:class:`ByteTokenizer`, vocabulary 256, no training: it works on any
text); bits per byte are then the loss in bits, comparable across tokenisers.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset

CORPORA = ("pydoc", "files")
SPLITS = ("train", "val", "test")


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``encode`` gives ids 0..255, ``decode`` inverts it exactly for any text."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": "bytes"}


def pydoc_documents() -> dict[str, str]:
    """``{topic: text}`` of Python's reference topics (the text ``help()`` shows)."""
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def file_documents(root: str | Path) -> dict[str, str]:
    """``{relative path: text}`` of the ``*.txt`` files under ``root`` (or the single file ``root``)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("*.txt")) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"data.root {root} is neither a text file nor a folder holding *.txt files")
    return {str(f.relative_to(root.parent if root.is_file() else root)): f.read_text(encoding="utf-8")
            for f in files}


def split_documents(docs: dict[str, str], val_fraction: float, test_fraction: float,
                    seed: int = 0) -> dict[str, list[str]]:
    """``{split: [document names]}``: documents in a seeded order, the first ones to test and validation until
    each holds its fraction of the characters, the rest to training. A single document is split by position
    instead (first 1 - val - test of it for training), since it cannot go whole to one side."""
    names = sorted(docs)
    if len(names) == 1:
        return {s: names for s in SPLITS}
    random.Random(seed).shuffle(names)
    total = sum(len(docs[n]) for n in names)
    out: dict[str, list[str]] = {"test": [], "val": [], "train": []}
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        while names and sum(len(docs[n]) for n in out[split]) < fraction * total and len(names) > 1:
            out[split].append(names.pop(0))
    out["train"] = names
    return out


def load_corpus(data_cfg) -> dict[str, str]:
    """The documents of ``data.corpus``."""
    if data_cfg.corpus == "pydoc":
        return pydoc_documents()
    if data_cfg.root is None:
        raise ValueError("data.corpus 'files' needs data.root (a .txt file or a folder of them)")
    return file_documents(data_cfg.root)


def split_text(data_cfg, split: str, seed: int) -> str:
    """The text of one split (documents joined by blank lines)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    docs = load_corpus(data_cfg)
    names = split_documents(docs, data_cfg.val_fraction, data_cfg.test_fraction, seed)[split]
    if len(docs) == 1:  # one document: split by position
        text = docs[names[0]]
        a = int(len(text) * (1 - data_cfg.val_fraction - data_cfg.test_fraction))
        b = int(len(text) * (1 - data_cfg.test_fraction))
        return {"train": text[:a], "val": text[a:b], "test": text[b:]}[split]
    return "\n\n".join(docs[n] for n in names)


class TokenChunks(Dataset):
    """Non-overlapping windows of ``block_size + 1`` tokens: item i is (x, y) = (w[:-1], w[1:]), both (T,).

    ``max_chunks`` keeps the first chunks only (a smaller evaluation set)."""

    def __init__(self, tokens: torch.Tensor, block_size: int, max_chunks: Optional[int] = None, text_bytes: int = 0):
        n = (len(tokens) - 1) // block_size
        if n < 1:
            raise ValueError(f"the text holds {len(tokens)} tokens, fewer than one window of block_size + 1 = "
                             f"{block_size + 1}; use more text or a smaller model.block_size")
        self.n = n if max_chunks is None else min(n, max_chunks)
        self.tokens, self.block_size = tokens, block_size
        self.bytes_per_token = text_bytes / max(1, len(tokens))  # for bits per byte

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        w = self.tokens[i * self.block_size: (i + 1) * self.block_size + 1]
        return w[:-1], w[1:]


def build_lm_dataset(data_cfg, split: str, seed: int, block_size: int, tokenizer) -> TokenChunks:
    """Token chunks of one split of the configured corpus."""
    text = split_text(data_cfg, split, seed)
    tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    limit = data_cfg.max_eval_chunks if split != "train" else None
    return TokenChunks(tokens, block_size, limit, text_bytes=len(text.encode("utf-8")))
