"""Command line: ``lors count`` (more sub-commands arrive with the models)."""
from __future__ import annotations

import argparse
import sys

from . import paper


def cmd_count(args: argparse.Namespace) -> int:
    print("Closed-form parameter counts for the LORS paper's settings\n")
    print(paper.format_comparisons(paper.paper_comparisons()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lors", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("count", help="print parameter counts and reductions")
    p.set_defaults(func=cmd_count)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
