"""Scoring a compressed model against its original: perplexity (causal LMs), embedding agreement (encoders),
greedy samples, and text generation with a Hugging Face causal LM (``lors generate --model``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.text import sentence_openings
from ..tasks.lm import perplexity

__all__ = ["distinct_n", "embed", "embedding_agreement", "generate", "greedy_sample", "greedy_samples",
           "next_token_agreement", "perplexity", "repetition", "sample_prompts", "token_batches"]

PROMPT = "The Python standard library"
# Fixed prompts for the greedy samples every LM row is scored by: technical prose, scripture, narrative, a list.
PROMPTS = (PROMPT, "And it came to pass, when the king", "Once upon a time, in a small village,",
           "The three most important things to know about")
EVAL_WINDOWS = 40  # evaluation windows per held-out text by default (spread evenly; "all": the whole text)
EVAL_PROMPTS = 16  # prompts cut from each held-out text's sentence openings, besides the four fixed PROMPTS
COLLAPSE = 0.5  # a sample with under half the original's distinct-bigram ratio loops: "collapsed"


def token_batches(tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 64) -> list[dict]:
    """Tokenised, padded batches (dicts of tensors, ``attention_mask`` included) of ``sentences`` in order."""
    return [dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for i in range(0, len(sentences), batch_size)]


@torch.no_grad()
def embed(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings (all-MiniLM-L6-v2's pooling), (N, D)."""
    model.eval()
    out = []
    for b in batches:
        hidden = model(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def embedding_agreement(reference: torch.Tensor, embeddings: torch.Tensor, k: int = 10) -> dict:
    """Mean and min cosine to the reference embeddings; top-1 agreement (%): for each sentence, is its nearest
    neighbour among the others the same as under the reference model; recall@k (%): the share of the
    reference model's ``k`` nearest neighbours that are among the new model's ``k`` nearest (robust to near-ties)."""
    cos = (reference * embeddings).sum(-1)
    sim_ref = (reference @ reference.T).fill_diagonal_(-2)
    sim_new = (embeddings @ embeddings.T).fill_diagonal_(-2)
    top_ref, top_new = sim_ref.topk(k, 1).indices, sim_new.topk(k, 1).indices
    hits = (top_ref[:, :, None] == top_new[:, None, :]).any(-1).float().mean()
    return {"cos_mean": cos.mean().item(), "cos_min": cos.min().item(),
            "top1_agree": 100.0 * (sim_ref.argmax(1) == sim_new.argmax(1)).float().mean().item(),
            f"recall@{k}": 100.0 * hits.item()}


@torch.no_grad()
def next_token_agreement(model: nn.Module, reference: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> dict:
    """How closely ``model`` predicts like ``reference`` on token windows (N, T): ``top1`` (%), the share of
    positions where both put the same token first, and ``kl``, the mean KL(reference || model) in nats per
    predicted token. Perplexity can stay close while these drift (samples then degrade first)."""
    agree, kl, count = 0, 0.0, 0
    for m in (model, reference):
        m.eval()
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size]
        p = reference(input_ids=x).logits.float().log_softmax(-1)   # (B, T, V)
        q = model(input_ids=x).logits.float().log_softmax(-1)
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        kl += float((p.exp() * (p - q)).sum())
        count += x.numel()
    return {"top1": 100.0 * agree / count, "kl": kl / count}


def distinct_n(tokens: list, n: int = 2) -> float:
    """Distinct ``n``-grams over all ``n``-grams of a token (or word) sequence: 1 when nothing repeats, near 0 for a
    sample that loops ("library library library ..."); compare a compressed model's samples with the original's."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def sample_prompts(texts, per_text: int = EVAL_PROMPTS) -> tuple[str, ...]:
    """The prompts a model's greedy samples are judged on: the four fixed :data:`PROMPTS` and ``per_text`` sentence
    openings (8 words) spread over each held-out text in ``texts`` (:func:`lors.data.text.sentence_openings`; fewer
    from a short text that has fewer). Four prompts are too few to compare recipes by collapse; tens are not."""
    if per_text < 0:
        raise ValueError(f"per_text must be >= 0, got {per_text}")
    return PROMPTS + tuple(p for t in texts for p in (sentence_openings(t, per_text, exact=False) if per_text else ()))


def greedy_sample(model: nn.Module, tokenizer, prompt: str = PROMPT, tokens: int = 30) -> str:
    """The model's greedy continuation of ``prompt`` (``tokens`` new tokens, KV cache on), prompt included."""
    return generate(model, tokenizer, prompt, tokens, temperature=0.0, chat=False, include_prompt=True)


def greedy_samples(model: nn.Module, tokenizer, prompts=PROMPTS, tokens: int = 48) -> list[str]:
    """Greedy continuations (``tokens`` new tokens each, prompt included) of every prompt in ``prompts``."""
    return [greedy_sample(model, tokenizer, p, tokens) for p in prompts]


def repetition(samples: list[str], reference: list[str], tokenizer, prompts=PROMPTS) -> dict:
    """How much more a model's greedy samples repeat than the reference model's on the same prompts.

    For each prompt: distinct-2 of the continuation's tokens (the prompt removed) divided by the reference's.
    Returns ``distinct2_vs_original`` (the mean ratio), ``collapsed_samples`` (how many ratios fall under
    ``COLLAPSE``) and ``collapsed`` (any did: one looping sample is what a user sees first)."""
    if len(samples) != len(reference) or len(samples) != len(prompts):
        raise ValueError(f"need one sample per prompt: {len(samples)} samples, {len(reference)} reference, "
                         f"{len(prompts)} prompts")

    def d2(text, prompt):
        return distinct_n(tokenizer(text[len(prompt):] if text.startswith(prompt) else text,
                                    add_special_tokens=False)["input_ids"])

    ratios = [d2(s, p) / max(d2(r, p), 1e-9) for s, r, p in zip(samples, reference, prompts)]
    low = sum(r < COLLAPSE for r in ratios)
    return {"distinct2_vs_original": round(sum(ratios) / len(ratios), 3), "collapsed_samples": low,
            "collapsed": low > 0}


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompt: str, tokens: int = 64, temperature: float = 0.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: int = 0, chat: Optional[bool] = None,
             include_prompt: bool = False) -> str:
    """Text from a Hugging Face causal LM: greedy at ``temperature`` 0, else sampled (``top_k`` / ``top_p``,
    seeded). ``chat``: wrap the prompt in the tokenizer's chat template as a user turn (default: when the tokenizer
    has one). Returns the new text (with ``include_prompt``, the prompt's text too)."""
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    options = dict(do_sample=temperature > 0, max_new_tokens=tokens, min_new_tokens=tokens if not chat else None,
                   pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if temperature > 0:
        torch.manual_seed(seed)
        options.update(temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0)
    else:
        options.update(temperature=None, top_k=None, top_p=None)
    model.eval()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
    return tokenizer.decode(out[0] if include_prompt else out[0, ids.shape[1]:], skip_special_tokens=True)
