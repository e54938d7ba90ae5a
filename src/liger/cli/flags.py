"""What every command's flags share: one comma-list parser, the LigerConfig flags (with `--softmax-layers
auto:N`), the help texts' rendering of defaults (each default is written once, in the options' dataclass or
constant it comes from), and the command line of a run."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import TypeVar

from ..config import MIXERS, LigerConfig
from ..errors import ConfigError
from ..layer_scores import parse_auto

T = TypeVar("T")


def listed(values) -> str:
    """A default list as the help texts show it: (512, 1024) -> "512,1024", (0.0, 0.5, 1.0) -> "0,0.5,1"."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def sci(x: float) -> str:
    """A learning rate as the help texts show it: 0.001 -> "1e-3"."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def comma_list(text: str, item: Callable[[str], T] = str, flag: str = "", what: str = "") -> tuple[T, ...]:
    """"a, b,,c" -> (item("a"), item("b"), item("c")): items stripped, blanks skipped; an item that `item`
    rejects (ValueError) raises ConfigError: "`flag` takes comma-separated `what`; got ...". """
    try:
        return tuple(item(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated {what}; got {text!r}") from None


def ints(flag: str, text: str) -> tuple[int, ...]:
    """"512,1024" -> (512, 1024)."""
    return comma_list(text, int, flag, "whole numbers such as 512,1024")


def floats(flag: str, text: str) -> tuple[float, ...]:
    """"0,0.5,1" -> (0.0, 0.5, 1.0)."""
    return comma_list(text, float, flag, "numbers such as 0,0.5,1")


def positive_ints(flag: str, text: str) -> tuple[int, ...]:
    """`ints`, at least one and every value >= 1."""
    values = ints(flag, text)
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} needs at least one value, all >= 1; got {text!r}")
    return values


def _layer_range(part: str) -> range:
    if "-" in part[1:]:
        first, last = part.split("-", 1)
        return range(int(first), int(last) + 1)
    return range(int(part), int(part) + 1)


def layer_list(text: str) -> tuple[int, ...]:
    """"0,15" -> (0, 15); ranges too: "0-3,8" -> (0, 1, 2, 3, 8)."""
    ranges = comma_list(text, _layer_range, "--softmax-layers",
                        "layer indices or ranges such as 0,15 or 0-3, or auto:N")
    return tuple(i for r in ranges for i in r)


def add_liger_config_args(p: argparse.ArgumentParser) -> None:
    """The LigerConfig flags shared by `convert` and `linearize`."""
    p.add_argument("--mixer", default=LigerConfig.mixer, choices=list(MIXERS),
                   help=f"linear mixer (default: {LigerConfig.mixer}; see README's mixer table)")
    p.add_argument("--window", type=int, default=LigerConfig.window,
                   help="sliding-window length in tokens; 0 = no window branch")
    p.add_argument(
        "--softmax-layers", default="", metavar="I,J",
        help="layers kept as softmax attention, e.g. 0,15 or 0-3,8; or auto:N, the N layers whose linearization "
        "costs most (attention-transfer error on a few batches; scores saved in layer_scores.json / the report)"
    )
    p.add_argument("--softmax-every", type=int, default=LigerConfig.softmax_every, metavar="N",
                   help="also keep one layer in every N as softmax (N=4: 3:1 linear to softmax)")
    p.add_argument("--learnable-mix", action="store_true", help="train the window/linear weights per head")
    p.add_argument("--num-slots", type=int, default=LigerConfig.num_slots, metavar="M",
                   help=f"gsa: memory slots per head (default {LigerConfig.num_slots}, capped at the head dimension)")
    p.add_argument("--negative-eigen", action="store_true",
                   help="gated_deltanet: beta in [0, 2] (negative eigenvalues) instead of [0, 1]")


def liger_config_from_args(args: argparse.Namespace) -> tuple[LigerConfig, int]:
    """(the LigerConfig of the flags, N of `--softmax-layers auto:N` or 0). auto:N is resolved on data
    before surgery (`liger.layer_scores.resolve_auto`); the config then lists no softmax layers of its own."""
    n_auto = parse_auto(args.softmax_layers) or 0
    config = LigerConfig(mixer=args.mixer, window=args.window,
                         softmax_layers=() if n_auto else layer_list(args.softmax_layers),
                         softmax_every=args.softmax_every, learnable_mix=args.learnable_mix,
                         num_slots=args.num_slots, delta_negative_eigen=args.negative_eigen)
    return config, n_auto


def explicit_command(parser: argparse.ArgumentParser, args: argparse.Namespace, words: list[str]) -> str:
    """`words` (e.g. ["liger", "eval"]) and every flag of `parser` whose value differs from its default: the
    exact command, reproducible, shell-quoted."""
    parts = list(words)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        parts += [flag] if isinstance(action, argparse._StoreTrueAction) else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)
