"""Command line: `liger convert | generate | info | linearize | eval | bench`. Errors a user can cause print
one line, exit code 2.

All the argparse code lives in this package: `flags` (what every command shares) and one module per command
group (`convert`: convert, generate, info; `linearize`; `evaluate`: eval; `bench`), each adding its
subcommands with `register(subparsers)`. The work itself is done by liger.train, liger.evaluate and
liger.bench, whose options are dataclasses; the flags' defaults are read from them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import LigerError
from . import bench, convert, evaluate, linearize

COMMAND_GROUPS = (convert, linearize, evaluate, bench)  # in the order `liger --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liger", description="Linearize pretrained Transformer LLMs into gated linear-recurrent models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LigerError as e:
        print(f"liger {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"liger {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
