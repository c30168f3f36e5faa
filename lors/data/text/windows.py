"""Token windows: the GPT's data sets (:class:`TokenChunks`) and fixed windows of a pretrained LM's text
(:func:`token_windows`).

The GPT reads ``data.corpus`` (:func:`load_corpus`), splits it with :func:`lors.data.text.split.split_text` by
``data.split_seed``, and tokenises each split. Training draws random windows (nanoGPT); validation and test score
every token of their split once (or an evenly spread cap of ``data.max_eval_tokens``), and carry the bytes of text
behind each scored token, so bits per byte are summed nats over summed bytes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import Dataset

from .sources import file_documents, kjv_documents, pydoc_documents
from .split import split_text

CORPORA = ("pydoc", "kjv", "files")


def load_corpus(data_cfg) -> dict[str, str]:
    """The documents of ``data.corpus``."""
    if data_cfg.corpus == "pydoc":
        return pydoc_documents()
    if data_cfg.corpus == "kjv":
        return kjv_documents()
    if data_cfg.root is None:
        raise ValueError("data.corpus 'files' needs data.root (a .txt file or a folder of them)")
    return file_documents(data_cfg.root)


def corpus_split(data_cfg, split: str) -> str:
    """The text of one split of the configured corpus, split by ``data.split_seed``."""
    return split_text(load_corpus(data_cfg), split, data_cfg.val_fraction, data_cfg.test_fraction,
                      data_cfg.split_seed)


class TokenChunks(Dataset):
    """Windows of ``block_size + 1`` tokens: item i is (x, y) = (w[:-1], w[1:]), both (T,).

    Evaluation (default): consecutive windows that predict every token after the first once; ``max_tokens`` keeps
    an evenly spread subset of about that many predicted tokens. ``token_bytes`` (V,) gives the bytes of text each
    token id stands for; :attr:`scored_tokens` and :attr:`scored_bytes` count what the windows predict. With
    ``random_windows=n`` the data set is n windows at random offsets, drawn from the torch RNG when an item is read
    (nanoGPT's sampling): the Trainer seeds every epoch, so each epoch sees new windows and a resumed run the same."""

    def __init__(self, tokens: torch.Tensor, block_size: int, token_bytes: Optional[torch.Tensor] = None,
                 max_tokens: Optional[int] = None, random_windows: Optional[int] = None):
        n = (len(tokens) - 1) // block_size
        if n < 1:
            raise ValueError(f"the text holds {len(tokens)} tokens, fewer than one window of block_size + 1 = "
                             f"{block_size + 1}; use more text or a smaller model.block_size")
        self.random = random_windows is not None
        self.tokens, self.block_size = tokens, block_size
        self.starts = torch.arange(n) * block_size
        if max_tokens is not None and max_tokens < n * block_size:
            keep = max(1, max_tokens // block_size)
            self.starts = self.starts[torch.linspace(0, n - 1, keep).round().long()]
        self.n = random_windows if self.random else len(self.starts)
        self.token_bytes = token_bytes
        targets = torch.cat([tokens[s + 1: s + 1 + block_size] for s in self.starts.tolist()]) if not self.random \
            else tokens[:0]
        self.scored_tokens = targets.numel()  # 0 for random training windows
        self.scored_bytes = int(token_bytes[targets].sum()) if token_bytes is not None else self.scored_tokens

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        start = int(torch.randint(len(self.tokens) - self.block_size, ())) if self.random else int(self.starts[i])
        w = self.tokens[start: start + self.block_size + 1]
        return w[:-1], w[1:]


def build_lm_dataset(data_cfg, split: str, block_size: int, tokenizer, text: Optional[str] = None) -> TokenChunks:
    """Token windows of one split of the configured corpus (``text``: that split's text, if already read)."""
    text = corpus_split(data_cfg, split) if text is None else text
    tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train = split == "train"
    return TokenChunks(tokens, block_size, tokenizer.token_bytes(), None if train else data_cfg.max_eval_tokens,
                       random_windows=data_cfg.train_windows if train else None)


def _token_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def window_capacity(tokenizer, texts: list[str] | str, length: int, skip: Optional[int] = 0,
                    spill: bool = False) -> int:
    """The largest ``count`` :func:`token_windows` gives for ``texts``, ``skip`` and ``spill``: equal shares of every
    text's ``length``-token slots (one in two of them with ``skip`` 0 or 1, all of them with ``skip=None``), or with
    ``spill`` every slot of every text."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    step = 1 if skip is None else 2
    slots = [_token_ids(tokenizer, t).numel() // length // step for t in texts]
    return sum(slots) if spill else len(texts) * min(slots)


def filled_shares(count: int, capacities: list[int]) -> list[int]:
    """``count`` split as evenly as ``capacities`` allow: a part that holds less than an equal share gives all it
    holds and the others split the rest (water-filling; the earlier parts take a remainder's extra one)."""
    if count > sum(capacities):
        raise ValueError(f"{count} windows asked of parts that hold {sum(capacities)} ({capacities})")
    shares, left, open_parts = list(capacities), count, sorted(range(len(capacities)), key=lambda i: capacities[i])
    while open_parts and capacities[open_parts[0]] * len(open_parts) <= left:  # the smallest parts give all
        left -= capacities[open_parts.pop(0)]
    each, extra = divmod(left, max(len(open_parts), 1))
    for rank, i in enumerate(sorted(open_parts)):  # the rest share equally, the earlier parts the extra ones
        shares[i] = each + (rank < extra)
    return shares


def token_windows(tokenizer, texts: list[str] | str, count: int | str, length: int,
                  skip: Optional[int] = 0, spill: bool = False) -> torch.Tensor:
    """``count`` windows of ``length`` token ids (count, length) of a Hugging Face tokenizer, spread evenly over
    each text.

    With several texts each gives an equal share (interleaved). ``skip`` takes the windows that lie
    between those of a call with ``skip=0`` (``skip=1``: a disjoint second set, e.g. held-out calibration);
    ``skip=None`` spreads them over every slot (twice as many fit; they may be any of the other two's).
    ``count="all"``: every consecutive window of every text, in order (the whole text but its last
    ``< length`` tokens), e.g. to score a whole evaluation text. ``spill=True`` lets a text that holds fewer than its
    equal share give all it holds and the others make up the rest (:func:`filled_shares`), the windows of all texts
    interleaved in proportion to their shares, so any run of consecutive windows mixes the texts alike.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if count == "all":
        if skip or length < 2:
            raise ValueError(f"count='all' takes every window: needs skip 0 and length >= 2, got {skip} and {length}")
        return torch.cat([ids[: ids.numel() // length * length].view(-1, length)
                          for ids in (_token_ids(tokenizer, t) for t in texts)])
    if isinstance(count, str) or count < 1 or length < 2:
        raise ValueError(f"need count >= 1 (or 'all') and length >= 2, got {count!r} and {length}")
    if skip not in (None, 0, 1):
        raise ValueError(f"skip must be 0, 1 or None, got {skip!r}")
    step, per_text = (1 if skip is None else 2), []
    ids_all = [_token_ids(tokenizer, t) for t in texts]
    shares = filled_shares(count, [ids.numel() // length // step for ids in ids_all]) if spill else \
        [count // len(texts) + (i < count % len(texts)) for i in range(len(texts))]
    for ids, share in zip(ids_all, shares):
        slots = ids.numel() // length
        if slots < step * share:
            raise ValueError(f"a text of {ids.numel():,} tokens holds fewer than {step * share} windows of {length}")
        picks = torch.linspace(0, slots - step, share).round().long() // step * step + (skip or 0)  # even / odd
        per_text.append(ids[: slots * length].view(slots, length)[picks])
    if spill:  # window i of a text with share s sits at (i + 0.5) / s of the run; ties keep the texts' order
        keyed = sorted(((i + 0.5) / len(p), j, i) for j, p in enumerate(per_text) for i in range(len(p)))
        return torch.stack([per_text[j][i] for _, j, i in keyed])
    order = [w for group in zip(*[list(p) for p in per_text]) for w in group]  # interleave the sources
    rest = [w for p in per_text for w in list(p)[min(shares):]]
    return torch.stack(order + rest)
