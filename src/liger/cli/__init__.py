"""Command line: `liger convert | generate | info | export | linearize | eval | bench`. Errors a user can cause print
one line, exit code 2.

All the argparse code lives in this package: `flags` (what every command shares) and one module per command
group (`convert`: convert, generate, info, export; `linearize`; `evaluate`: eval; `bench`), each adding its
subcommands with `register(subparsers)`. The work itself is done by liger.train, liger.evaluate and
liger.bench, whose options are dataclasses; the flags' defaults are read from them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import LigerError
from . import bench, convert, evaluate, linearize
from .flags import Parser, check_bounds

COMMAND_GROUPS = (convert, linearize, evaluate, bench)  # in the order `liger --help` lists them


def build_parser() -> Parser:
    parser = Parser(
        prog="liger", description="Linearize pretrained Transformer LLMs into gated linear-recurrent models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 for an error the user can fix (one line on stderr: a
    usage error, a flag out of range, a LigerError), 130 when interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error (printed by `Parser.error`), or --help
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        check_bounds(parser, args)
        args.func(args)
    except LigerError as e:
        print(f"liger {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"liger {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
