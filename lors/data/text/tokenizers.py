"""Tokenizers of the GPT's text: UTF-8 bytes, or a byte-level BPE trained on the training split.

Both round-trip any text exactly and tell how many bytes of text each token id stands for
(:meth:`token_bytes`), so bits per byte are summed over the scored tokens themselves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ...errors import require

TOKENIZERS = ("bytes", "bpe")
BPE_VOCAB = 1024  # data.vocab_size when data.tokenizer is "bpe" and the config gives none


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``encode`` gives ids 0..255, ``decode`` inverts it exactly for any text."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> torch.Tensor:
        """Bytes of text per token id, (V,): one each."""
        return torch.ones(self.vocab_size, dtype=torch.long)

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

    def token_bytes(self) -> torch.Tensor:
        """Bytes of text per token id, (V,): a byte-level token's string spells one character per byte."""
        return torch.tensor([len(self.tokenizer.id_to_token(i) or "") for i in range(self.vocab_size)],
                            dtype=torch.long)


def make_tokenizer(data_cfg, train_text, saved: Optional[Path] = None):
    """The run's tokenizer: bytes, or a BPE loaded from ``saved`` (a run's ``tokenizer.json``) when it exists,
    else trained on ``train_text()`` (called only then: the training split's text)."""
    if data_cfg.tokenizer == "bytes":
        return ByteTokenizer()
    if saved is not None and Path(saved).is_file():
        return BpeTokenizer.load(saved)
    return BpeTokenizer.train(train_text(), data_cfg.vocab_size or BPE_VOCAB)
