"""`liger eval`: the command line of liger.evaluate.runner."""

from __future__ import annotations

import argparse

from ..errors import ConfigError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated whole numbers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    from .runner import SECTIONS

    p = sub.add_parser(
        "eval", help="teacher and linearized model side by side (quality, recall, speed, memory)",
        description="Compare a liger checkpoint with its teacher on the same inputs; writes eval.json, eval.md and "
        "PNG plots. The full default takes about half an hour on a 2-core CPU; --quick a few minutes.",
    )
    p.add_argument("--model", required=True, help="liger checkpoint folder")
    p.add_argument("--teacher", default=None, help="teacher model folder, hub id or 'bundled' (default: the one "
                   "the checkpoint was made from, else bundled)")
    p.add_argument("--out", default=None, help="output folder (default: MODEL/eval)")
    p.add_argument("--sections", default=None,
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but lm_eval, plus lm_eval "
                   "when --tasks is given)")
    p.add_argument("--tasks", default="", help="lm-eval tasks (e.g. piqa,arc_easy,arc_challenge,hellaswag,"
                   "winogrande,mmlu) and/or paths to task YAML files")
    p.add_argument("--lm-eval-limit", type=int, default=None, help="examples per lm-eval task (default: all)")
    p.add_argument("--data", default="builtin", help="held-out text source (see liger linearize --data)")
    p.add_argument("--seq-len", type=int, default=None, help="held-out block length (default 512)")
    p.add_argument("--blocks", type=int, default=None, help="held-out blocks (default 24)")
    p.add_argument("--items", type=int, default=None, help="items per zero-shot task (default 100)")
    p.add_argument("--recall-lengths", default=None, help="passkey context lengths (default 512,...,8192)")
    p.add_argument("--depths", default=None, help="passkey depths (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--lengths", default=None, help="efficiency context lengths (default 512,...,8192)")
    p.add_argument("--batch-sizes", default=None, help="efficiency batch sizes (default 1,8)")
    p.add_argument("--decode-tokens", type=int, default=None, help="decode steps timed (default 8)")
    p.add_argument("--batch-size", type=int, default=4, help="batch size of scoring (default 4)")
    p.add_argument("--quick", action="store_true", help="small sizes for a first look")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)


def options_from_args(args: argparse.Namespace):
    from .runner import EvalOptions

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    sections = tuple(s.strip() for s in args.sections.split(",")) if args.sections else (
        ("lm", "tasks", "recall", "efficiency") + (("lm_eval",) if tasks else ()))
    kw = dict(model=args.model, teacher=args.teacher, out=args.out, sections=sections, tasks=tasks,
              lm_eval_limit=args.lm_eval_limit, data=args.data, batch_size=args.batch_size, seed=args.seed,
              progress=not args.quiet)
    for name, value in [("seq_len", args.seq_len), ("blocks", args.blocks), ("items", args.items),
                        ("decode_tokens", args.decode_tokens)]:
        if value is not None:
            kw[name] = value
    for name, value, parse in [("recall_lengths", args.recall_lengths, _ints), ("depths", args.depths, _floats),
                               ("eff_lengths", args.lengths, _ints), ("batch_sizes", args.batch_sizes, _ints)]:
        if value is not None:
            kw[name] = parse(value)
    return EvalOptions.quick(**kw) if args.quick else EvalOptions(**kw)


def cmd_eval(args: argparse.Namespace) -> None:
    from .runner import run_eval

    opts = options_from_args(args)
    res = run_eval(opts)
    out = opts.out or f"{opts.model}/eval"
    print(f"wrote {out}/eval.md")
    for r in res["summary"]:
        ratio = "" if r["ratio"] is None else f"  (ratio {r['ratio']:.3g})"
        t = "-" if r["teacher"] is None else f"{r['teacher']:.4g}"
        s = "-" if r["linearized"] is None else f"{r['linearized']:.4g}"
        print(f"  {r['metric']}: teacher {t}, linearized {s}{ratio}")
