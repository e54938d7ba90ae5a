"""`liger bench {ops,model,train,all,profile}`, and the scripts in bench/ that run one benchmark
(`standalone`): the flags of liger.bench."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from ..bench import model, ops, profile, train
from ..bench.common import targets_markdown
from ..bench.suite import run_all
from ..errors import ConfigError
from .flags import (COUNT, NON_NEGATIVE, Parser, add_fused_decode_flag, add_weights_flag, check_bounds, comma_list,
                    listed, number, positive_ints)

DESCRIPTION = """\
Benchmarks, each writing results.json, results.md (tables, and the issue's targets as rows of target /
measured ratio / met) and PNG plots to --out, with the date, the machine and the command:
  ops    chunk_gla forward and forward+backward vs. the token-by-token ops (small T only) and vs. causal
         softmax attention (scaled_dot_product_attention), T 512..32,768; GFLOP/s vs. a float32 matmul
  model  linearized bundled teacher vs. the original: prefill, decode ms/token, peak memory, cache bytes at
         contexts 512..16,384, batch 1 and 8
  train  tokens/s of a LoRA training step (q/k/v, r=8) at 512, 1,024 and 4,096 tokens, bf16 and fp32
  all    the three, into --out/ops, --out/model and --out/train, with a combined results.md
  profile  where a decode step of each model spends its time (attention / MLP / output layer / other, top
         operators; torch.profiler) at one context, batch 1 and 8; not part of `all`
Run on a quiet machine: timings on a shared CPU vary 2x (and a loaded one makes multi-threaded torch
crawl). Rough durations on 2 CPU cores: ops about 5 min, model 10-15 min (peak memory about 8 GB: the
original's batch-8 KV cache at 16,384 tokens), train about 10 min, profile about 2 min; --quick a few minutes
in all.
"""

HELPS = {"ops": "chunk_gla vs. token-by-token and softmax attention; GFLOP/s",
         "model": "linearized vs. original: prefill, decode, memory",
         "train": "LoRA training step tokens/s", "all": "ops, model and train into subfolders of --out",
         "profile": "where a decode step spends its time, both models"}


def _add_ops_args(p: argparse.ArgumentParser) -> None:
    o = ops.OpsOptions
    g = p.add_argument_group("ops (chunk_gla)")
    g.add_argument("--lengths", default=None, metavar="T,T",
                   help=f"sequence lengths (default {listed(ops.FULL_LENGTHS)}; --quick {listed(ops.QUICK_LENGTHS)})")
    g.add_argument("--ref-lengths", default=None, metavar="T,T",
                   help=f"lengths at which the token-by-token ops also run (slow; default {listed(ops.FULL_REF_LENGTHS)}; "
                   f"--quick {listed(ops.QUICK_REF_LENGTHS)})")
    number(g, "--heads", bounds=COUNT, default=o.heads, help=f"query heads (default {o.heads}, as the bundled teacher)")
    number(g, "--kv-heads", bounds=COUNT, default=o.kv_heads, help=f"key/value heads (default {o.kv_heads})")
    number(g, "--head-dim", bounds=COUNT, default=o.head_dim, help=f"K = V = head dimension (default {o.head_dim})")
    number(g, "--op-batch", bounds=COUNT, default=o.op_batch, help=f"batch size of the op inputs (default {o.op_batch})")
    number(g, "--matmul-size", bounds=COUNT, default=None,
           help=f"n of the n x n float32 matmul that sets the reference GFLOP/s (default {ops.MATMUL_SIZE})")
    g.add_argument("--forward-only", action="store_true", help="skip the forward+backward timings")
    number(g, "--op-repeats", bounds=COUNT, default=o.op_repeats,
           help=f"timed calls per measurement, median (default {o.op_repeats})")
    g.add_argument("--compile", action="store_true",
                   help="also time torch.compile(chunk_gla) (inductor; compiles once per length, ~30 s each)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    n = model.ModelOptions.max_prefill_tokens
    g = p.add_argument_group("model (prefill / decode / memory)")
    g.add_argument("--contexts", default=None, metavar="L,L",
                   help=f"context lengths (default {listed(model.FULL_CONTEXTS)}; --quick {listed(model.QUICK_CONTEXTS)})")
    g.add_argument("--batch-sizes", default=None, metavar="B,B",
                   help=f"batch sizes (default {listed(model.FULL_BATCHES)}; --quick {listed(model.QUICK_BATCHES)})")
    number(g, "--decode-tokens", bounds=COUNT, default=None,
           help=f"decode steps per measurement (default {model.FULL_DECODE_TOKENS}; "
           f"--quick {model.QUICK_DECODE_TOKENS})")
    number(g, "--max-prefill-tokens", bounds=NON_NEGATIVE, default=n, metavar="N",
           help="prefill only when batch * context <= N, else decode from a synthetic cache "
           f"(default {n}: real prefill at batch 1 up to {n:,}, at batch 8 up to {n // 8:,})")
    g.add_argument("--skip-beyond-limit", action="store_true",
                   help="skip the original model beyond its max_position_embeddings (default: run it, RoPE "
                   "extrapolating)")
    g.add_argument("--peer", choices=["llama.cpp"], default=None,
                   help="also time the teacher's GGUF (the bundled Q4_1 file) in llama.cpp at the same contexts, "
                   "batch 1, and compare decode with it (needs llama-cpp-python; skipped with a message without)")
    add_weights_flag(g, "both models")
    add_fused_decode_flag(g)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    r = train.TrainBenchOptions.lora_r
    g = p.add_argument_group("train (LoRA step tokens/s)")
    g.add_argument("--train-lengths", default=None, metavar="T,T",
                   help=f"tokens per step (default {listed(train.FULL_LENGTHS)}; --quick {listed(train.QUICK_LENGTHS)})")
    g.add_argument("--precisions", default=None, metavar="P,P",
                   help=f"bf16 (autocast) and/or fp32 (default {listed(train.PRECISIONS)}; --quick "
                   f"{listed(train.QUICK_PRECISIONS)})")
    number(g, "--train-repeats", bounds=COUNT, default=None,
           help=f"timed steps, median (default {train.FULL_REPEATS}; --quick {train.QUICK_REPEATS})")
    number(g, "--lora-r", bounds=COUNT, default=r, help=f"LoRA rank (default {r})")


def _add_profile_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("profile (decode step)")
    number(g, "--context", bounds=COUNT, default=None, help=f"context tokens in the cache (default "
           f"{profile.FULL_CONTEXT}; --quick {profile.QUICK_CONTEXT})")
    g.add_argument("--profile-batch-sizes", default=None, metavar="B,B", help=f"batch sizes (default "
                   f"{listed(profile.FULL_BATCHES)}; --quick {listed(profile.QUICK_BATCHES)})")
    number(g, "--steps", bounds=COUNT, default=profile.ProfileOptions.steps,
           help=f"profiled decode steps (default {profile.ProfileOptions.steps})")
    add_weights_flag(g, "both models")
    add_fused_decode_flag(g)


def _sizes(flag: str, text: str | None) -> tuple[int, ...] | None:
    return positive_ints(flag, text) if text else None


def _precisions(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    values = comma_list(text)
    if not values or set(values) - set(train.PRECISIONS):
        raise ConfigError(f"--precisions takes bf16 and/or fp32, comma-separated; got {text!r}")
    return values


def _options(cls, args: argparse.Namespace, **parsed):
    """`cls` (a benchmark's options) from the flags of the same names; `parsed`: the comma lists, parsed."""
    return cls(**{**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}, **parsed})


def ops_options(args: argparse.Namespace) -> ops.OpsOptions:
    return _options(ops.OpsOptions, args, lengths=_sizes("--lengths", args.lengths),
                    ref_lengths=_sizes("--ref-lengths", args.ref_lengths))


def model_options(args: argparse.Namespace) -> model.ModelOptions:
    return _options(model.ModelOptions, args, contexts=_sizes("--contexts", args.contexts),
                    batch_sizes=_sizes("--batch-sizes", args.batch_sizes))


def train_options(args: argparse.Namespace) -> train.TrainBenchOptions:
    return _options(train.TrainBenchOptions, args, train_lengths=_sizes("--train-lengths", args.train_lengths),
                    precisions=_precisions(args.precisions))


def profile_options(args: argparse.Namespace) -> profile.ProfileOptions:
    return _options(profile.ProfileOptions, args,
                    profile_batch_sizes=_sizes("--profile-batch-sizes", args.profile_batch_sizes))


# name: (module, flags, options from the flags)
BENCHES = {"ops": (ops, _add_ops_args, ops_options), "model": (model, _add_model_args, model_options),
           "train": (train, _add_train_args, train_options), "profile": (profile, _add_profile_args, profile_options)}
SUITE = ("ops", "model", "train")  # `liger bench all`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: ops, model, train, all (JSON, markdown, PNG)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in ("ops", "model", "train", "all", "profile"):
        q = kinds.add_parser(name, help=HELPS[name], description=HELPS[name])
        q.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files replaced)")
        q.add_argument("--quick", action="store_true", help="fewer, smaller sizes (minutes)")
        q.add_argument("--tiny-model", action="store_true", help=argparse.SUPPRESS)  # tests: a tiny random Llama
        for part in (SUITE if name == "all" else (name,)):
            BENCHES[part][1](q)
        q.set_defaults(func=cmd_bench)


def _command() -> str:
    argv = sys.argv
    if argv and Path(argv[0]).name == "liger":
        return " ".join(shlex.quote(a) for a in ["liger", *argv[1:]])
    return " ".join(shlex.quote(a) for a in argv)


def cmd_bench(args: argparse.Namespace) -> None:
    out = Path(args.out)
    command = _command()
    if args.bench == "all":
        run_all(out, *(BENCHES[name][2](args) for name in SUITE), command)
        print(f"wrote {out}/results.md")
        return
    module, _, options = BENCHES[args.bench]
    payload = module.run(options(args), out, command)
    print(f"wrote {out}/results.md")
    print(targets_markdown(payload["targets"]))


# bench/*.py: (default --out, help of --quick, whether the hidden --tiny-model flag exists, the markdown)
STANDALONE = {
    "ops": ("bench-results/ops", "fewer, smaller sizes (a few minutes)", False, ops.ops_markdown),
    "model": ("bench-results/model", "fewer, smaller sizes", True, model.model_markdown),
    "train": ("bench-results/train", "fewer, smaller sizes", True, train.train_markdown),
    "profile": ("bench-results/profile", "a 512-token context, batch 1", True, profile.profile_markdown),
}


def standalone(name: str, argv: list[str] | None = None) -> None:
    """One benchmark as a script of its own (bench/ops_gla.py, ...): run it and print its markdown."""
    module, add_args, options = BENCHES[name]
    out, quick_help, tiny, markdown = STANDALONE[name]
    p = Parser(description=module.__doc__.split("\n\n")[0])
    p.add_argument("--out", default=out)
    p.add_argument("--quick", action="store_true", help=quick_help)
    if tiny:
        p.add_argument("--tiny-model", action="store_true", help=argparse.SUPPRESS)
    add_args(p)
    args = p.parse_args(argv)
    try:
        check_bounds(p, args)
    except ConfigError as e:
        p.error(str(e))
    print(markdown(module.run(options(args), args.out)))
