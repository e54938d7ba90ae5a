"""What every command's flags share: one comma-list parser, the LigerConfig flags (with `--softmax-layers
auto:N`), the help texts' rendering of defaults (each default is written once, in the options' dataclass or
constant it comes from), and the command line of a run."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ..config import DEFAULT_WINDOW, MIXERS, LigerConfig
from ..errors import ConfigError
from ..layer_scores import DEFAULT_SELECT, KL_BLOCKS, SCORE_BLOCKS, SCORE_SEQ_LEN, SELECT_RULES, parse_auto
from ..models import max_positions
from ..quantize import WEIGHT_FORMATS

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors (an unknown flag, a value of the wrong type) on one line,
    `liger CMD: error: ...`, exit code 2 -- the form of every other error a user can cause."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        self.exit(2)


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric flag: low <= value (low < value if `open_low`), value <= high (< if `open_high`); floats must also
    be finite. Attached to the flag's argparse action (`number`) and checked right after parsing
    (`check_bounds`), before anything loads."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    note: str = ""  # appended to the message, e.g. "(0 = none)"

    def describe(self, kind: type) -> str:
        what = "a whole number" if kind is int else "a finite number"
        low, high = (f"{x:g}" if isinstance(x, float) else str(x) for x in (self.low, self.high))
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.open_low else '>='} {low}"
        return what if self.high is None else f"{what} <= {high}"

    def ok(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def check(self, flag: str, value, kind: type) -> None:
        if value is not None and not self.ok(value):
            note = f" {self.note}" if self.note else ""
            raise ConfigError(f"{flag} must be {self.describe(kind)}{note}, got {value!r}")


COUNT = Bounds(1)  # a whole number >= 1: sizes, budgets, ranks
NON_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, open_low=True)  # a finite float > 0: learning rates, timeouts
SEED = Bounds(0, 2**32 - 1)
PROBABILITY = Bounds(0, 1, open_low=True)


def number(p, *names: str, bounds: Bounds, type: type = int, **kw) -> argparse.Action:
    """`p.add_argument(*names, type=type, **kw)` for a numeric flag whose value must lie in `bounds`."""
    action = p.add_argument(*names, type=type, **kw)
    action.bounds = bounds
    return action


def _chosen_parsers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Iterator[argparse.ArgumentParser]:
    """`parser` and the subcommand parsers that `args` went through (`liger bench model`: three)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            yield from _chosen_parsers(action.choices[getattr(args, action.dest)], args)


def check_bounds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """ConfigError naming the first numeric flag of the chosen command whose value lies outside its `Bounds`."""
    for p in _chosen_parsers(parser, args):
        for action in p._actions:
            bounds = getattr(action, "bounds", None)
            if bounds is not None:
                bounds.check(action.option_strings[-1], getattr(args, action.dest, None), action.type)


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
    except ConfigError:
        raise
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
        if int(last) < int(first):
            raise ConfigError(f"--softmax-layers range {part!r} runs backwards (no layers); write it low-high, "
                              f"e.g. {last}-{first}")
        return range(int(first), int(last) + 1)
    return range(int(part), int(part) + 1)


def layer_list(text: str) -> tuple[int, ...]:
    """"0,15" -> (0, 15); ranges too: "0-3,8" -> (0, 1, 2, 3, 8)."""
    ranges = comma_list(text, _layer_range, "--softmax-layers",
                        "layer indices or ranges such as 0,15 or 0-3, or auto:N")
    layers = tuple(i for r in ranges for i in r)
    if any(i < 0 for i in layers):
        raise ConfigError(f"--softmax-layers takes layer indices >= 0 (the first layer is 0); got {text!r}")
    return layers


def add_liger_config_args(p: argparse.ArgumentParser) -> None:
    """The LigerConfig flags shared by `convert` and `linearize`."""
    p.add_argument("--mixer", default=LigerConfig.mixer, choices=list(MIXERS),
                   help=f"linear mixer (default: {LigerConfig.mixer}; see README's mixer table)")
    number(p, "--window", bounds=NON_NEGATIVE, default=None,
           help=f"sliding-window length in tokens (default {DEFAULT_WINDOW}; native_gdn has none); 0 = no window "
           "branch; at most the model's max_position_embeddings")
    p.add_argument(
        "--softmax-layers", default="", metavar="I,J",
        help="layers kept as softmax attention, e.g. 0,15 or 0-3,8; or auto:N, N layers chosen from data by "
        "--softmax-select (scores saved in layer_scores.json / the report)"
    )
    p.add_argument(
        "--softmax-select", default=DEFAULT_SELECT, choices=SELECT_RULES,
        help="how auto:N chooses its layers (default %(default)s): kl, restore one layer at a time to softmax "
        "attention and keep the N that lower KL(teacher || student) most, on the first "
        f"{KL_BLOCKS} held-out blocks (linearize: of --data, --seq-len tokens each; convert: of the built-in "
        f"corpus, {SCORE_SEQ_LEN} tokens each), one forward per layer per block; kl-greedy: N rounds of that, each "
        "on top of the earlier picks; recall: the same loop ranked by the answer NLL of synthetic passkey "
        f"prompts; transfer: the largest attention-transfer error on {SCORE_BLOCKS} training blocks (measured worse than "
        "evenly spaced layers, docs/RESULTS.md)"
    )
    number(p, "--softmax-every", bounds=Bounds(0, note="(0 = off)"), default=LigerConfig.softmax_every, metavar="N",
           help="also keep one layer in every N as softmax (N=4: 3:1 linear to softmax)")
    p.add_argument("--learnable-mix", action="store_true", help="train the window/linear weights per head")
    number(p, "--num-slots", bounds=COUNT, default=LigerConfig.num_slots, metavar="M",
           help=f"gsa: memory slots per head (default {LigerConfig.num_slots}, capped at the head dimension)")
    p.add_argument("--negative-eigen", action="store_true",
                   help="gated_deltanet: beta in [0, 2] (negative eigenvalues) instead of [0, 1]")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="gla, hgrn2, simple_gla, retention: divide the linear branch by its normaliser q'z "
                   "(a weighted average of the values at any length); on by default for those mixers, "
                   "--no-normalize gives the Liger paper's unnormalised branch")
    number(p, "--sparse-cache", bounds=NON_NEGATIVE, default=0, metavar="M",
                   help="also keep, per layer and key head, the M tokens that have left the window and that a "
                   "linear memory reconstructs worst, as exact keys/values that the window's softmax covers "
                   "(fixed bytes: M tokens' KV per layer; long-context recall, docs/RESULTS.md); 0 (default): off")


def liger_config_from_args(args: argparse.Namespace) -> tuple[LigerConfig, int]:
    """(the LigerConfig of the flags, N of `--softmax-layers auto:N` or 0). auto:N is resolved on data
    before surgery by the rule `args.softmax_select` (`liger.layer_scores.resolve_auto`); the config then lists
    no softmax layers of its own."""
    n_auto = parse_auto(args.softmax_layers) or 0
    config = LigerConfig(mixer=args.mixer, window=args.window,
                         softmax_layers=() if n_auto else layer_list(args.softmax_layers),
                         softmax_every=args.softmax_every, learnable_mix=args.learnable_mix,
                         num_slots=args.num_slots, delta_negative_eigen=args.negative_eigen,
                         normalize=args.normalize, sparse_cache=args.sparse_cache)
    return config, n_auto


def check_against_model(config: LigerConfig, model_config) -> None:
    """The LigerConfig flags against the model's transformers config (read before its weights): --window
    within its context limit, --softmax-layers within its layers."""
    config.check_window(max_positions(model_config), "--window")
    config.check_layers(model_config.get_text_config().num_hidden_layers)


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


def add_weights_flag(p: argparse.ArgumentParser, what: str) -> None:
    """`--weights {float32,bf16,int8,int4}`: the weight format of `what` (liger.quantize)."""
    p.add_argument("--weights", default="float32", choices=WEIGHT_FORMATS,
                   help=f"weight format of {what} (default float32): bf16, or weight-only int8 (one scale per "
                   "output channel) or int4 (groups of 32, CPU only) through PyTorch's quantized matmuls; smaller "
                   "weights make batch-1 decoding faster (see docs/PERFORMANCE.md)")


def add_fused_decode_flag(p: argparse.ArgumentParser) -> None:
    """`--fused-decode`: decode steps of the gated linear mixers as one compiled graph (liger.ops.fused_decode)."""
    p.add_argument("--fused-decode", action="store_true",
                   help="run each linear layer's single-token decode step as one torch.compile'd graph (CPU; "
                   "compiles for a few seconds first; decodes eagerly, with a warning, without a C++ compiler)")


def apply_fused_decode(on: bool) -> None:
    """Switch the fused decode step on for this process if `on`, saying why when it cannot run."""
    if not on:
        return
    from ..ops import fused_decode

    reason = fused_decode.set_enabled(True)
    if reason:
        print(f"liger: --fused-decode: {reason}; decoding eagerly", file=sys.stderr)
