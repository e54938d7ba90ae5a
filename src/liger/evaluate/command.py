"""`liger eval`: the command line of liger.evaluate.runner."""

from __future__ import annotations

import argparse
import shlex

from ..errors import ConfigError

DESCRIPTION = """\
Compare a liger checkpoint with its teacher on the same inputs and write eval.json, eval.md and PNG plots to
--out. Sections: lm (held-out perplexity, top-1 agreement, KL to the teacher), tasks (offline zero-shot
cloze and continuation multiple choice from held-out text), recall (passkey grid and MQAR), efficiency
(prefill/decode speed, peak memory, cache bytes) and lm_eval (lm-evaluation-harness tasks, with --tasks).
Runtime on a 2-core CPU with the 135M bundled teacher: --quick about 5-10 minutes; the full default about
an hour, most of it the efficiency section at 4,096-8,192 tokens and batch 8 (progress bars show each part).
"""


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated whole numbers such as 512,1024; got {text!r}") from None


def _floats(flag: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers such as 0,0.5,1; got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    from .runner import SECTIONS

    p = sub.add_parser(
        "eval", help="teacher and linearized model side by side (quality, recall, speed, memory)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="DIR", help="liger checkpoint folder")
    p.add_argument("--teacher", default=None, metavar="PATH",
                   help="teacher: model folder, hub id or 'bundled' (default: the teacher recorded in the checkpoint, "
                   "else bundled); it must share the checkpoint's tokenizer")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, replaced atomically (default: MODEL/eval)")
    p.add_argument("--sections", default=None, metavar="S,S",
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but lm_eval; lm_eval is added "
                   "when --tasks is given)")
    p.add_argument("--tasks", default="", metavar="T,T",
                   help="lm-eval task names (e.g. piqa,arc_easy,arc_challenge,hellaswag,winogrande,mmlu; "
                   "their datasets come from the hub) and/or paths to task YAML files or folders; list names "
                   "with `lm-eval ls tasks`")
    p.add_argument("--lm-eval-limit", type=int, default=None, metavar="N",
                   help="at most N examples per lm-eval task (default: all)")
    p.add_argument("--data", default="builtin",
                   help="source of the held-out text: builtin (default, offline), a local file or folder, a saved "
                   "dataset or hub id, as for `liger linearize --data`; only its held-out split is used")
    p.add_argument("--seq-len", type=int, default=None, help="held-out block length in tokens (default 512)")
    p.add_argument("--blocks", type=int, default=None, help="number of held-out blocks (default 24; --quick 8)")
    p.add_argument("--items", type=int, default=None,
                   help="items per zero-shot task (default 100; --quick 40)")
    p.add_argument("--recall-lengths", default=None, metavar="L,L",
                   help="passkey context lengths in tokens (default 512,1024,2048,4096,8192; --quick 256,512,1024; "
                   "the default is capped at the model's max_position_embeddings)")
    p.add_argument("--depths", default=None, metavar="D,D",
                   help="passkey needle depths in [0, 1] (default 0,0.25,0.5,0.75,1; --quick 0,0.5,1)")
    p.add_argument("--passkey-samples", type=int, default=None, metavar="N",
                   help="passkeys per (length, depth) cell (default 1)")
    p.add_argument("--mqar-pairs", default=None, metavar="N,N",
                   help="MQAR key-value pair counts (default 4,8,16,32; --quick 4,8)")
    p.add_argument("--lengths", default=None, metavar="L,L",
                   help="efficiency context lengths (default 512,1024,2048,4096,8192, capped at the model's limit; "
                   "--quick 256,512,1024)")
    p.add_argument("--batch-sizes", default=None, metavar="B,B",
                   help="efficiency batch sizes (default 1,8; --quick 1,2)")
    p.add_argument("--decode-tokens", type=int, default=None, metavar="N",
                   help="decode steps timed after each prefill (default 8; --quick 4)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="batch size when scoring lm, tasks and lm-eval (default 4)")
    p.add_argument("--quick", action="store_true", help="small sizes for a first look (explicit flags still win)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the task items, passkeys, MQAR pairs and efficiency inputs (default 0); the same "
                   "seed gives the same quality numbers")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.set_defaults(func=cmd_eval, parser=p)


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """`liger eval` with every flag whose value differs from its default: the exact command, reproducible."""
    parts = ["liger", "eval"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        parts += [flag] if isinstance(action, argparse._StoreTrueAction) else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def options_from_args(args: argparse.Namespace):
    from .runner import EvalOptions

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip()) if args.sections else (
        ("lm", "tasks", "recall", "efficiency") + (("lm_eval",) if tasks else ()))
    kw = dict(model=args.model, teacher=args.teacher, out=args.out, sections=sections, tasks=tasks,
              lm_eval_limit=args.lm_eval_limit, data=args.data, batch_size=args.batch_size, seed=args.seed,
              progress=not args.quiet, command=command_line(args.parser, args))
    for name, value in [("seq_len", args.seq_len), ("blocks", args.blocks), ("items", args.items),
                        ("decode_tokens", args.decode_tokens), ("passkey_samples", args.passkey_samples)]:
        if value is not None:
            kw[name] = value
    explicit = set()
    for name, flag, value, parse in [
        ("recall_lengths", "--recall-lengths", args.recall_lengths, _ints),
        ("depths", "--depths", args.depths, _floats),
        ("mqar_pairs", "--mqar-pairs", args.mqar_pairs, _ints),
        ("eff_lengths", "--lengths", args.lengths, _ints),
        ("batch_sizes", "--batch-sizes", args.batch_sizes, _ints),
    ]:
        if value is not None:
            kw[name] = parse(flag, value)
            explicit.add(name)
    kw["explicit_lengths"] = tuple(sorted(explicit & {"recall_lengths", "eff_lengths"}))
    return EvalOptions.quick(**kw) if args.quick else EvalOptions(**kw)


def cmd_eval(args: argparse.Namespace) -> None:
    from .runner import run_eval

    opts = options_from_args(args)
    res = run_eval(opts)
    print(f"wrote {res['out']}/eval.md")
    for r in res["summary"]:
        ratio = "" if r["ratio"] is None else f"  (ratio {r['ratio']:.3g})"
        t = "-" if r["teacher"] is None else f"{r['teacher']:.4g}"
        s = "-" if r["linearized"] is None else f"{r['linearized']:.4g}"
        print(f"  {r['metric']}: teacher {t}, linearized {s}{ratio}")
