"""`liger bench {ops,model,train,all}`: the benchmarks of liger.bench from the command line."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

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


def _command() -> str:
    argv = sys.argv
    if argv and Path(argv[0]).name == "liger":
        return " ".join(shlex.quote(a) for a in ["liger", *argv[1:]])
    return " ".join(shlex.quote(a) for a in argv)


def register(sub: argparse._SubParsersAction) -> None:
    from . import model, ops, profile, train

    p = sub.add_parser("bench", help="benchmarks: ops, model, train, all (JSON, markdown, PNG)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    adders = {"ops": [ops.add_arguments], "model": [model.add_arguments], "train": [train.add_arguments]}
    adders["all"] = [a[0] for a in adders.values()]
    adders["profile"] = [profile.add_arguments]
    helps = {"ops": "chunk_gla vs. token-by-token and softmax attention; GFLOP/s",
             "model": "linearized vs. original: prefill, decode, memory",
             "train": "LoRA training step tokens/s", "all": "ops, model and train into subfolders of --out",
             "profile": "where a decode step spends its time, both models"}
    for name, add in adders.items():
        q = kinds.add_parser(name, help=helps[name], description=helps[name])
        q.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files replaced)")
        q.add_argument("--quick", action="store_true", help="fewer, smaller sizes (minutes)")
        q.add_argument("--tiny-model", action="store_true", help=argparse.SUPPRESS)  # tests: a tiny random Llama
        for a in add:
            a(q)
        q.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> None:
    from . import model, ops, profile, train

    out = Path(args.out)
    command = _command()
    modules = {"ops": ops, "model": model, "train": train}
    if args.bench != "all":
        payload = {**modules, "profile": profile}[args.bench].run(args, out, command)
        print(f"wrote {out}/results.md")
        print(_summary(payload["targets"]))
        return
    payloads = {}
    for name, mod in modules.items():
        payloads[name] = mod.run(args, out / name, command)
    write_summary(out, payloads, command)
    print(f"wrote {out}/results.md")


def _summary(targets: list[dict]) -> str:
    from .common import targets_markdown

    return targets_markdown(targets)


def write_summary(out: Path, payloads: dict[str, dict], command: str) -> None:
    """`out`/results.json and results.md: the header and every benchmark's targets, with links to the parts."""
    from .common import header, header_markdown, write_results

    head = header(command)
    md = [f"# liger bench all\n\n{header_markdown(head)}"]
    for name, p in payloads.items():
        md += [f"## {name} ([{name}/results.md]({name}/results.md))\n", _summary(p["targets"]), ""]
    write_results(out, "results", {**head, "targets": {n: p["targets"] for n, p in payloads.items()}}, "\n".join(md))
