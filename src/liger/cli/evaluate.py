"""`liger eval`: the flags of liger.evaluate.runner."""

from __future__ import annotations

import argparse

from ..evaluate.runner import DEFAULT_SECTIONS, QUICK, SECTIONS, EvalOptions, run_eval
from .flags import COUNT, NON_NEGATIVE, SEED, add_weights_flag, comma_list, explicit_command, floats, ints, listed, number

DESCRIPTION = """\
Compare a liger checkpoint with its teacher on the same inputs and write eval.json, eval.md and PNG plots to
--out. Sections: lm (held-out perplexity, top-1 agreement, KL to the teacher), tasks (offline zero-shot
cloze and continuation multiple choice from held-out text), recall (passkey grid and MQAR), efficiency
(prefill/decode speed, peak memory, cache bytes) and lm_eval (lm-evaluation-harness tasks, with --tasks).
Runtime on a 2-core CPU with the 135M bundled teacher: --quick about 5-10 minutes; the full default about
an hour, most of it the efficiency section at 4,096-8,192 tokens and batch 8 (progress bars show each part).
"""

E = EvalOptions  # the defaults; QUICK: those of --quick


def register(sub: argparse._SubParsersAction) -> None:
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
    number(p, "--lm-eval-limit", bounds=COUNT, default=None, metavar="N",
           help="at most N examples per lm-eval task (default: all)")
    p.add_argument("--data", default=E.data,
                   help="source of the held-out text: builtin (default, offline), a local file or folder, a saved "
                   "dataset or hub id, as for `liger linearize --data`; only its held-out split is used")
    _add_size_args(p)
    number(p, "--batch-size", bounds=COUNT, default=E.batch_size,
           help=f"batch size when scoring lm, tasks and lm-eval (default {E.batch_size})")
    p.add_argument("--quick", action="store_true", help="small sizes for a first look (explicit flags still win)")
    number(p, "--seed", bounds=SEED, default=E.seed,
           help=f"seed of the task items, passkeys, MQAR pairs and efficiency inputs (default {E.seed}); the "
           "same seed gives the same quality numbers")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    number(p, "--sparse-cache", bounds=NON_NEGATIVE, default=None, metavar="M",
           help="measure the checkpoint with a sparse cache of M tokens per layer and key head (0: off), without "
           "retraining (default: as saved); see `liger linearize --sparse-cache`")
    add_weights_flag(p, "the linearized model (the teacher stays float32, the reference)")
    p.set_defaults(func=cmd_eval, parser=p)


def _add_size_args(p: argparse.ArgumentParser) -> None:
    """The sizes: None (the default) leaves EvalOptions' value, or with --quick QUICK's."""
    number(p, "--seq-len", bounds=COUNT, default=None, help=f"held-out block length in tokens (default {E.seq_len})")
    number(p, "--blocks", bounds=COUNT, default=None,
           help=f"number of held-out blocks (default {E.blocks}; --quick {QUICK['blocks']})")
    number(p, "--ood-blocks", bounds=COUNT, default=None,
           help=f"out-of-domain held-out blocks (GNU licence texts; default {E.ood_blocks}; --quick "
           f"{QUICK['ood_blocks']})")
    number(p, "--long-tokens", bounds=NON_NEGATIVE, default=None,
           help=f"tokens of the long out-of-domain document for perplexity by position (default {E.long_tokens}, "
           f"capped at the model's max_position_embeddings; --quick {QUICK['long_tokens']}; 0 = none)")
    number(p, "--items", bounds=COUNT, default=None,
           help=f"items per zero-shot task (default {E.items}; --quick {QUICK['items']})")
    p.add_argument("--recall-lengths", default=None, metavar="L,L",
                   help=f"passkey context lengths in tokens (default {listed(E.recall_lengths)}; --quick "
                   f"{listed(QUICK['recall_lengths'])}; the default is capped at the model's max_position_embeddings)")
    p.add_argument("--depths", default=None, metavar="D,D",
                   help=f"passkey needle depths in [0, 1] (default {listed(E.depths)}; --quick "
                   f"{listed(QUICK['depths'])})")
    number(p, "--passkey-samples", bounds=COUNT, default=None, metavar="N",
           help=f"passkeys per (length, depth) cell (default {E.passkey_samples})")
    p.add_argument("--mqar-pairs", default=None, metavar="N,N",
                   help=f"MQAR key-value pair counts (default {listed(E.mqar_pairs)}; --quick "
                   f"{listed(QUICK['mqar_pairs'])})")
    p.add_argument("--lengths", default=None, metavar="L,L",
                   help=f"efficiency context lengths (default {listed(E.eff_lengths)}, capped at the model's limit; "
                   f"--quick {listed(QUICK['eff_lengths'])})")
    p.add_argument("--batch-sizes", default=None, metavar="B,B",
                   help=f"efficiency batch sizes (default {listed(E.batch_sizes)}; --quick {listed(QUICK['batch_sizes'])})")
    number(p, "--decode-tokens", bounds=NON_NEGATIVE, default=None, metavar="N",
           help=f"decode steps timed after each prefill (default {E.decode_tokens}; --quick "
           f"{QUICK['decode_tokens']})")


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    tasks = comma_list(args.tasks)
    sections = comma_list(args.sections) if args.sections else DEFAULT_SECTIONS + (("lm_eval",) if tasks else ())
    kw = dict(model=args.model, teacher=args.teacher, out=args.out, sections=sections, tasks=tasks,
              lm_eval_limit=args.lm_eval_limit, data=args.data, batch_size=args.batch_size, seed=args.seed,
              progress=not args.quiet, command=explicit_command(args.parser, args, ["liger", "eval"]))
    kw["weights"] = args.weights
    for name, value in [("sparse_cache", args.sparse_cache), ("seq_len", args.seq_len), ("blocks", args.blocks), ("items", args.items),
                        ("decode_tokens", args.decode_tokens), ("passkey_samples", args.passkey_samples),
                        ("ood_blocks", args.ood_blocks), ("long_tokens", args.long_tokens)]:
        if value is not None:
            kw[name] = value
    explicit = {"long_tokens"} if args.long_tokens is not None else set()
    for name, flag, value, parse in [
        ("recall_lengths", "--recall-lengths", args.recall_lengths, ints),
        ("depths", "--depths", args.depths, floats),
        ("mqar_pairs", "--mqar-pairs", args.mqar_pairs, ints),
        ("eff_lengths", "--lengths", args.lengths, ints),
        ("batch_sizes", "--batch-sizes", args.batch_sizes, ints),
    ]:
        if value is not None:
            kw[name] = parse(flag, value)
            explicit.add(name)
    kw["explicit_lengths"] = tuple(sorted(explicit & {"recall_lengths", "eff_lengths", "long_tokens"}))
    return EvalOptions.quick(**kw) if args.quick else EvalOptions(**kw)


def cmd_eval(args: argparse.Namespace) -> None:
    res = run_eval(options_from_args(args))
    print(f"wrote {res['out']}/eval.md")
    for r in res["summary"]:
        ratio = "" if r["ratio"] is None else f"  (ratio {r['ratio']:.3g})"
        t = "-" if r["teacher"] is None else f"{r['teacher']:.4g}"
        s = "-" if r["linearized"] is None else f"{r['linearized']:.4g}"
        print(f"  {r['metric']}: teacher {t}, linearized {s}{ratio}")
