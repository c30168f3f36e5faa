"""lors command line.

    lors demo                         dense vs LORS vs LCT ViT on the embedded digits data
    lors train CONFIG [--set k=v ...] [--resume] [--output-dir DIR]
    lors eval CONFIG --checkpoint PATH
    lors count [CONFIG]               parameter report (no CONFIG: the paper's settings)
"""
from __future__ import annotations

import argparse
import sys

from . import paper
from .accounting import count_parameters, reduction, report
from .config import ConfigError, load_config


def _build(cfg):
    from .models.vit import build_vit
    return lambda: build_vit(cfg.model)


def _datasets(cfg):
    from .data.classification import build_dataset
    return (build_dataset(cfg.data, "train", cfg.train.seed, train=True),
            build_dataset(cfg.data, "test", cfg.train.seed))


def cmd_train(args) -> int:
    from .engine.fit import fit
    from .models.vit import BLOCK_LINEARS

    cfg = load_config(args.config, args.set)
    run_dir = args.output_dir or cfg.train.output_dir
    train_set, test_set = _datasets(cfg)
    history = fit(cfg, _build(cfg), train_set, test_set, run_dir, resume=args.resume, lct_targets=BLOCK_LINEARS)
    if history:
        print(f"final: top1={history[-1]['top1']:.2f}% after {history[-1]['epoch']} epochs; checkpoint {run_dir}/last.json")
    return 0


def cmd_eval(args) -> int:
    import torch

    from .engine.fit import load_for_eval, pick_device
    from .engine.train import evaluate

    cfg = load_config(args.config, args.set)
    model, meta = load_for_eval(args.checkpoint, _build(cfg))
    _, test_set = _datasets(cfg)
    device = pick_device(cfg.train.device)
    loader = torch.utils.data.DataLoader(test_set, batch_size=cfg.data.eval_batch_size)
    metrics = evaluate(model.to(device), loader, device)
    print(f"checkpoint {args.checkpoint} (epoch {meta['epoch'] + 1}), {count_parameters(model):,} parameters")
    print("  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


def cmd_count(args) -> int:
    if args.config is None:
        print("Closed-form parameter counts for the LORS paper's settings\n")
        print(paper.format_comparisons(paper.paper_comparisons()))
        return 0
    import dataclasses

    import torch

    from .models.vit import build_vit

    cfg = load_config(args.config, args.set)
    with torch.device("meta"):  # count without allocating
        model = build_vit(cfg.model)
        dense = build_vit(dataclasses.replace(cfg.model, variant="dense"))
    print(report(model))
    blocks, dense_blocks = model.block_parameter_count(), dense.block_parameter_count()
    total, dense_total = count_parameters(model), count_parameters(dense)
    print(f"\nvariant {cfg.model.variant}: blocks {blocks:,} vs dense {dense_blocks:,} "
          f"({reduction(dense_blocks, blocks):.1f}% fewer); total {total:,} vs dense {dense_total:,} "
          f"({reduction(dense_total, total):.1f}% fewer)")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    run_demo(epochs=args.epochs, seeds=seeds, out_dir=args.out, progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p, required=True):
        p.add_argument("config", nargs=None if required else "?", help="YAML experiment file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=5 (repeatable)")

    p = sub.add_parser("train", help="train a model from a YAML config")
    with_config(p)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.json")
    p.add_argument("--output-dir", default=None, help="run directory (default: train.output_dir)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's test split")
    with_config(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint .json file or run directory")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("count", help="parameter report for a config (or the paper's settings)")
    with_config(p, required=False)
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("demo", help="dense vs LORS vs LCT ViT on scikit-learn digits")
    p.add_argument("--epochs", type=int, default=None, help="epochs per variant (default: the demo's setting)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (mean +- std table)")
    p.add_argument("--out", default="runs/demo", help="directory for runs, table and plot")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"lors: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
