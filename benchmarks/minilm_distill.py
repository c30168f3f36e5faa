"""MiniLM at 50 %: which distillation loss, learning rate and data recover the sentence embeddings best.

    OMP_NUM_THREADS=1 python benchmarks/minilm_distill.py --steps 300 \
        cos:cos:1e-4:train cos3e-5:cos:3e-5:train sim:cos+sim:1e-4:train hidden:cos+hidden:1e-4:train \
        bible:cos:1e-4:train+bible

Compresses all-MiniLM-L6-v2 to 50 % of its encoder with the default recipe once (kept in ``--start``, reloaded by
``lors.from_pretrained`` on later runs), then distils a copy per variant ``NAME:LOSS:LR:DATA`` for ``--steps`` steps
of 32 sentences (AdamW, 5 % warm-up then cosine, gradients clipped at 1) and scores the 1,000 held-out sentences
every 100 steps, as ``lors compress --model minilm`` does (mean / min cosine to the original's embeddings, top-1
agreement, recall@10). Losses, summed:

* ``cos``: 1 - cosine of the mean-pooled, normalised sentence embeddings;
* ``sim``: 10 x the mean squared difference of the batch's cosine-similarity matrices (relational: the
  neighbourhoods recall@10 measures);
* ``hidden``: every layer's token states, MSE divided by the teacher's mean square, averaged over layers.

Data: ``train`` is the 4,309 training sentences (the held-out sentences' sources never enter); ``train+bible`` adds
the sentences of the Bible's training books. Writes ``NAME.json`` (one row per 100 steps) to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

LOSS_TERMS = ("cos", "sim", "hidden")
DATA = ("train", "train+bible")


def parse_variant(text: str) -> tuple[str, tuple[str, ...], float, str]:
    parts = text.split(":")
    if len(parts) != 4:
        raise ValueError(f"a variant is NAME:LOSS:LR:DATA, got {text!r}")
    name, loss, lr, data = parts
    terms = tuple(loss.split("+"))
    if not set(terms) <= set(LOSS_TERMS) or data not in DATA:
        raise ValueError(f"variant {text!r}: LOSS is '+'-joined terms of {LOSS_TERMS}, DATA one of {DATA}")
    return name, terms, float(lr), data


def pooled(model, batch, states: bool):
    out = model(**batch, output_hidden_states=states)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (out.last_hidden_state * mask).sum(1) / mask.sum(1), out.hidden_states if states else None


def loss_of(terms, student, teacher, batch) -> torch.Tensor:
    states = "hidden" in terms
    with torch.no_grad():
        t_emb, t_states = pooled(teacher, batch, states)
    s_emb, s_states = pooled(student, batch, states)
    t, s = F.normalize(t_emb, dim=-1), F.normalize(s_emb, dim=-1)
    loss = s.new_zeros(())
    if "cos" in terms:
        loss = loss + (1 - (t * s).sum(-1)).mean()
    if "sim" in terms:
        loss = loss + 10 * (s @ s.T - t @ t.T).pow(2).mean()
    if states:
        mask = batch["attention_mask"].bool()
        for a, b in zip(s_states[1:], t_states[1:]):
            loss = loss + (a - b).pow(2).mean(-1)[mask].mean() / b.pow(2).mean() / (len(s_states) - 1)
    return loss


def main(argv=None) -> dict:
    import lors
    from lors.compression import CompressConfig
    from lors.compression.evaluate import embed, embedding_agreement, token_batches
    from lors.compression.pipeline import compress
    from lors.compression.pretrained import load_encoder
    from lors.compression.run import held_out_sentences
    from lors.data.text import calibration_text
    from lors.data.text.sources import sentences_of

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="+", help="NAME:LOSS:LR:DATA, e.g. cos:cos:1e-4:train")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--start", default="runs/minilm_distill/start", help="folder of the compressed start (reused)")
    p.add_argument("--out", default="runs/minilm_distill")
    args = p.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variants]
    except ValueError as e:
        p.error(str(e))
    if args.steps < 100:
        p.error(f"--steps must be at least 100 (scores every 100 steps), got {args.steps}")

    torch.manual_seed(0)
    teacher, tokenizer = load_encoder("minilm", progress=False)
    train, held = held_out_sentences(0, 1000)
    cfg = CompressConfig(budget=0.5).resolve("encoder", teacher)
    eval_batches = token_batches(tokenizer, held, 64)
    reference = embed(teacher, eval_batches)
    if Path(args.start, "lors.json").is_file():
        start = lors.from_pretrained(args.start)
    else:
        start, _ = compress(teacher, token_batches(tokenizer, train[:256], 32), cfg,
                            validation=token_batches(tokenizer, train[256:384], 32), log=print)
        lors.save_pretrained(start, args.start, tokenizer, cfg)
    print("start", embedding_agreement(reference, embed(start, eval_batches)), flush=True)
    bible = [s for t in calibration_text("bible") for s in sentences_of(t.replace("\n", " "))]
    print(f"{len(train):,} training sentences, {len(bible):,} Bible sentences", flush=True)

    results = {}
    for name, terms, lr, data in variants:
        sentences = train if data == "train" else train + bible
        student = copy.deepcopy(start).train()
        opt = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=lr, weight_decay=0.0)
        order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(0)).tolist()
        warm, began, rows = max(1, args.steps // 20), time.time(), []
        for step in range(args.steps):
            scale = (step + 1) / warm if step < warm else \
                0.5 * (1 + math.cos(math.pi * (step - warm) / (args.steps - warm)))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            picked = [sentences[order[(step * 32 + i) % len(order)]] for i in range(32)]
            batch = dict(tokenizer(picked, padding=True, truncation=True, max_length=64, return_tensors="pt"))
            loss = loss_of(terms, student, teacher, batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            if (step + 1) % 100 == 0:
                row = embedding_agreement(reference, embed(student, eval_batches))
                student.train()
                row.update(step=step + 1, loss=loss.item(), minutes=(time.time() - began) / 60)
                rows.append(row)
                print(name, {k: round(v, 4) for k, v in row.items()}, flush=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{name}.json").write_text(json.dumps(rows, indent=1))
        results[name] = rows
    return results


if __name__ == "__main__":
    main()
