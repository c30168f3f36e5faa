"""MiniLM at 50 %: which distillation loss, learning rate and data recover the sentence embeddings best.

    OMP_NUM_THREADS=1 lors compress --model minilm --budget 0.5 --out runs/minilm_s/lct50s_c4096
    OMP_NUM_THREADS=1 python benchmarks/minilm_distill.py --start runs/minilm_s/lct50s_c4096 --steps 1000 \
        base:mse+cos:1e-4:train more:mse+cos:1e-4:train+pydoc+crops

Distils a copy of the compressed start (a ``lors compress --out`` folder) per variant ``NAME:LOSS:LR:DATA`` for
``--steps`` steps of 32 sentences (AdamW, 5 % warm-up then cosine, gradients clipped at 1, the student in eval mode
as ``lors distill`` runs it) and scores the 1,000 held-out sentences every 100 steps, as ``lors compress --model
minilm`` does (mean / min cosine to the original's embeddings, top-1 agreement, recall@10); at the end it also
scores 1,000 of the training sentences (the gap between the two says whether more data or more capacity is what is
missing). Losses, summed:

* ``cos``: 1 - cosine of the mean-pooled, normalised sentence embeddings;
* ``mse``: the last layer's token states, mean squared error divided by the teacher's mean square
  (``mse+cos`` is ``lors distill``'s encoder loss);
* ``sim``: 10 x the mean squared difference of the batch's cosine-similarity matrices (relational: the
  neighbourhoods recall@10 measures);
* ``hidden``: every layer's token states, MSE divided by the teacher's mean square, averaged over layers;
* ``bank``: neighbourhoods against a bank, the original's embeddings of every (uncropped) sentence of the variant's
  data: KL(teacher || student) between the softmax of the batch's similarities to the bank at temperature
  ``BANK_TEMPERATURE`` (a sentence's own entry masked), the original's embedding of the sentence on one side, the
  student's on the other. Unlike ``sim`` (32 random sentences, rarely near each other), the bank holds near
  neighbours, whose order is what recall@10 scores;
* ``cov``: the pooled embeddings' error ``e = s - t`` in the metric of the bank's covariance ``C`` (normalised to a
  mean eigenvalue of 1), ``e C e / 2``: an error along the directions in which sentences differ most counts most. A
  sentence's similarity to the others moves by ``e . n`` for each other sentence ``n``, and over them the spread of
  that change is ``e C e``: this is the relational ``sim`` term with the whole bank for the batch, in closed form.
  (``cos`` weighs every direction alike; the students' errors lie more in the top principal directions than
  isotropic noise's, ``benchmarks/recall_vs_cosine.py``.)

A term may carry a weight, ``TERM*W`` (e.g. ``mse+cos+bank*0.1``); the default weight is 1.

Data, ``+``-joined: ``train`` is the 4,309 training sentences (the held-out sentences' sources never enter);
``bible`` the sentences of the Bible's training books; ``pydoc`` the 1,254 sentences of Python's reference topics;
``stdpkg`` the ~4,800 docstring sentences of the standard library's packages (``email``, ``asyncio``, ``json``, ...:
the files below a folder, which the sentence split never reads; no tests, ``idlelib``, ``lib2to3``); ``deps`` the
~100 K docstring sentences of the installed dependencies' Python files (:func:`lors.data.text.dependency_texts`:
torch, sympy, transformers, scipy, ...; they follow the installed versions; none that another source has). A
sentence that is among the held-out ones is dropped from every source; ``crops`` adds, for every sentence of the
others, two random spans of at least half its words (new inputs from the same text); ``swaps`` adds two copies of
every sentence of the others with ``SWAP_RATE`` of its words replaced by words drawn from all of them (each word as
often as it occurs there: TinyBERT's augmentation, with corpus words in place of a masked LM's guesses). Writes
``NAME.json`` (one row per 100 steps, then the training-sentence scores) to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

LOSS_TERMS = ("cos", "mse", "sim", "hidden", "bank", "cov")
BANK_TEMPERATURE = 0.05
SWAP_RATE = 0.15
DATA = ("train", "bible", "pydoc", "stdpkg", "deps", "crops", "swaps")
NEW_INPUTS = ("crops", "swaps")  # made from the other sources' sentences


def parse_variant(text: str) -> tuple[str, dict[str, float], float, tuple[str, ...]]:
    """``NAME:LOSS:LR:DATA`` -> (name, {term: weight}, lr, sources)."""
    parts = text.split(":")
    if len(parts) != 4:
        raise ValueError(f"a variant is NAME:LOSS:LR:DATA, got {text!r}")
    name, loss, lr, data = parts
    sources, terms = tuple(data.split("+")), {}
    for item in loss.split("+"):
        term, _, weight = item.partition("*")
        try:
            terms[term] = float(weight) if weight else 1.0
        except ValueError:
            terms[term] = -1.0
        if term not in LOSS_TERMS or terms[term] <= 0:
            terms = None
            break
    if terms is None or not set(sources) <= set(DATA) or set(sources) <= set(NEW_INPUTS):
        raise ValueError(f"variant {text!r}: LOSS is '+'-joined terms of {LOSS_TERMS}, each optionally *WEIGHT (> 0), "
                         f"DATA '+'-joined sources of {DATA} ({' and '.join(NEW_INPUTS)} with at least one other)")
    return name, terms, float(lr), sources


def word_swaps(sentences: list[str], copies: int = 2, seed: int = 0, rate: float = SWAP_RATE) -> list[str]:
    """``copies`` of every sentence with ``round(rate * words)`` of its words (at least one) replaced, at distinct
    random positions, by words drawn from all the sentences' words (frequency-weighted; a drawn word may equal the
    one it replaces). Seeded."""
    rng = random.Random(seed)
    vocabulary = [w for s in sentences for w in s.split()]
    out = []
    for sentence in sentences:
        words = sentence.split()
        if not words:
            raise ValueError(f"a sentence to swap words in needs at least 1 word, got {sentence!r}")
        for _ in range(copies):
            new = list(words)
            for i in rng.sample(range(len(words)), max(1, round(rate * len(words)))):
                new[i] = rng.choice(vocabulary)
            out.append(" ".join(new))
    return out


def pooled(model, batch, states: bool):
    out = model(**batch, output_hidden_states=states)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (out.last_hidden_state * mask).sum(1) / mask.sum(1), out.hidden_states if states else None


def bank_kl(t: torch.Tensor, s: torch.Tensor, bank: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) of the softmax over ``bank`` similarities at ``BANK_TEMPERATURE``; ``t``, ``s``
    (B, D) normalised embeddings, ``bank`` (N, D), ``own`` (B,) each sentence's bank row (-1: none), masked."""
    mask = torch.zeros(len(t), len(bank), dtype=torch.bool)
    has = own >= 0
    mask[has.nonzero().squeeze(1), own[has]] = True
    logp_t = (t @ bank.T / BANK_TEMPERATURE).masked_fill(mask, float("-inf")).log_softmax(-1)
    logp_s = (s @ bank.T / BANK_TEMPERATURE).masked_fill(mask, float("-inf")).log_softmax(-1)
    return (logp_t.exp() * (logp_t - logp_s)).masked_fill(mask, 0.0).sum(-1).mean()


def bank_metric(bank: torch.Tensor) -> torch.Tensor:
    """The covariance of the bank's rows (N, D), scaled to a mean eigenvalue of 1: the ``cov`` term's metric."""
    centred = bank - bank.mean(0)
    cov = centred.T @ centred / len(bank)
    return cov * len(cov) / cov.trace()


def loss_of(terms: dict, student, teacher, batch, bank=None, own=None, metric=None) -> torch.Tensor:
    states = "hidden" in terms or "mse" in terms
    with torch.no_grad():
        t_emb, t_states = pooled(teacher, batch, states)
    s_emb, s_states = pooled(student, batch, states)
    mask = batch["attention_mask"].bool()
    t, s = F.normalize(t_emb, dim=-1), F.normalize(s_emb, dim=-1)
    loss = s.new_zeros(())
    if "cos" in terms:
        loss = loss + terms["cos"] * (1 - (t * s).sum(-1)).mean()
    if "sim" in terms:
        loss = loss + terms["sim"] * 10 * (s @ s.T - t @ t.T).pow(2).mean()
    if "mse" in terms:
        a, b = s_states[-1], t_states[-1]
        loss = loss + terms["mse"] * (a - b).pow(2).mean(-1)[mask].mean() / b.pow(2).mean()
    if "hidden" in terms:
        for a, b in zip(s_states[1:], t_states[1:]):
            loss = loss + terms["hidden"] * (a - b).pow(2).mean(-1)[mask].mean() / b.pow(2).mean() / (len(s_states) - 1)
    if "bank" in terms:
        loss = loss + terms["bank"] * bank_kl(t, s, bank, own)
    if "cov" in terms:
        loss = loss + terms["cov"] * 0.5 * ((s - t) @ metric * (s - t)).sum(-1).mean()
    return loss


def main(argv=None) -> dict:
    import lors
    from lors.compression.export import read_meta
    from lors.compression.evaluate import embed, embedding_agreement, token_batches
    from lors.compression.pretrained import load_encoder
    from lors.compression.run import held_out_sentences
    from lors.data.text import (calibration_text, dependency_texts, english_sentences, pydoc_documents,
                                sentence_crops, sentences_of, stdlib_package_texts)

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="+", help="NAME:LOSS:LR:DATA, e.g. base:mse+cos:1e-4:train")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--start", required=True, help="the compressed start: a folder of lors compress --model minilm")
    p.add_argument("--out", default="runs/minilm_distill")
    args = p.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variants]
    except ValueError as e:
        p.error(str(e))
    if args.steps < 100:
        p.error(f"--steps must be at least 100 (scores every 100 steps), got {args.steps}")
    try:
        read_meta(args.start)
    except (FileNotFoundError, ValueError) as e:
        p.error(f"--start: {e}")

    torch.manual_seed(0)
    teacher, tokenizer = load_encoder("minilm", progress=False)
    train, held = held_out_sentences(0, 1000)
    eval_batches, seen_batches = token_batches(tokenizer, held, 64), token_batches(tokenizer, train[:1000], 64)
    reference, seen_reference = embed(teacher, eval_batches), embed(teacher, seen_batches)
    start = lors.from_pretrained(args.start)
    print("start", embedding_agreement(reference, embed(start, eval_batches)), flush=True)
    pydoc = dict.fromkeys(s for t in pydoc_documents().values() for s in sentences_of(t))
    all_held = set(english_sentences()[1])
    stdpkg = dict.fromkeys(s for t in stdlib_package_texts().values() for s in sentences_of(t))
    known = set(train) | set(pydoc) | set(stdpkg)
    deps = dict.fromkeys(s for t in dependency_texts().values() for s in sentences_of(t) if s not in known) \
        if any("deps" in data for _, _, _, data in variants) else {}  # ~1 min to read: only when asked for
    texts = {"train": train, "pydoc": list(pydoc), "stdpkg": list(stdpkg), "deps": list(deps),
             "bible": [s for t in calibration_text("bible") for s in sentences_of(t.replace("\n", " "))]}
    texts = {k: v if k == "train" else [s for s in v if s not in all_held] for k, v in texts.items()}
    print(", ".join(f"{len(v):,} {k} sentences" for k, v in texts.items()), flush=True)

    results = {}
    for name, terms, lr, data in variants:
        sentences = [s for source in data if source not in NEW_INPUTS for s in texts[source]]
        bank, rows_of, metric = None, {}, None
        if "bank" in terms or "cov" in terms:
            rows_of = {s: i for i, s in enumerate(dict.fromkeys(sentences))}
            began = time.time()
            bank = embed(teacher, token_batches(tokenizer, list(rows_of), 64))
            print(f"{name}: bank of {len(bank):,} teacher embeddings in {time.time() - began:.0f} s", flush=True)
            metric = bank_metric(bank)
        base = list(sentences)
        if "crops" in data:
            sentences += sentence_crops(base, 2, 0)
        if "swaps" in data:
            sentences += word_swaps(base, 2, 0)
        student = copy.deepcopy(start).eval()  # no dropout, as lors distill trains
        opt = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=lr, weight_decay=0.0)
        order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(0)).tolist()
        warm, began, rows = max(1, args.steps // 20), time.time(), []
        print(f"{name}: {len(sentences):,} sentences", flush=True)
        for step in range(args.steps):
            scale = (step + 1) / warm if step < warm else \
                0.5 * (1 + math.cos(math.pi * (step - warm) / (args.steps - warm)))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            picked = [sentences[order[(step * 32 + i) % len(order)]] for i in range(32)]
            batch = dict(tokenizer(picked, padding=True, truncation=True, max_length=64, return_tensors="pt"))
            own = torch.tensor([rows_of.get(s, -1) for s in picked])
            loss = loss_of(terms, student, teacher, batch, bank, own, metric)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            if (step + 1) % 100 == 0:
                row = embedding_agreement(reference, embed(student, eval_batches))
                row.update(step=step + 1, loss=loss.item(), minutes=(time.time() - began) / 60)
                rows.append(row)
                print(name, {k: round(v, 4) for k, v in row.items()}, flush=True)
        seen = embedding_agreement(seen_reference, embed(student, seen_batches))
        rows.append({"training_sentences": seen})
        print(name, "1,000 training sentences:", {k: round(v, 4) for k, v in seen.items()}, flush=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{name}.json").write_text(json.dumps(rows, indent=1))
        results[name] = rows
    return results


if __name__ == "__main__":
    main()
