"""`liger linearize`: the main job's command line."""

from __future__ import annotations

import argparse
import os

from ..errors import ConfigError

# Defaults of the main job on the bundled teacher, sized to finish within 30 minutes on a 2-core CPU
# (see docs/RESULTS.md for what they reach).
DEFAULT_MAX_TOKENS = 300_000
DEFAULT_MAX_MINUTES = 22.0


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_liger_config_args

    p = sub.add_parser(
        "linearize",
        help="convert, train back, evaluate and save (the main job)",
        description="Linearize a model, recover its quality with a little training, and report held-out "
        "perplexity of the teacher, the converted model and the trained model.",
    )
    p.add_argument("--model", default="bundled", help="model folder, hub id or 'bundled' (default)")
    p.add_argument("--out", default=None, help="output folder (default: runs/liger-<model>)")
    p.add_argument("--recipe", default="liger", choices=["liger", "lolcats"],
                   help="liger: LoRA on q/k/v; lolcats: attention transfer, then LoRA on q/k/v/o")
    add_liger_config_args(p)
    p.add_argument("--data", default="builtin",
                   help="builtin (default, offline), self (teacher-generated), a hub dataset id, a "
                   "save_to_disk folder, or .txt/.jsonl/.parquet files or folders")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per packed training sequence (default 512)")
    p.add_argument("--eval-blocks", type=int, default=24, help="held-out blocks for perplexity (default 24)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"training token budget (default {DEFAULT_MAX_TOKENS:,} unless --max-steps is given)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps budget")
    p.add_argument("--max-minutes", type=float, default=DEFAULT_MAX_MINUTES,
                   help=f"training time budget in minutes (default {DEFAULT_MAX_MINUTES:g}; 0 = none)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of the LoRA stage (default 1e-3)")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--batch-size", type=int, default=1, help="sequences per micro-batch (default 1)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--transfer-lr", type=float, default=None, help="lolcats attention-transfer lr (default 1e-2)")
    p.add_argument("--transfer-tokens", type=int, default=None,
                   help="token budget of the lolcats attention-transfer stage (default: same as --max-tokens)")
    p.add_argument("--distill", default="none", choices=["none", "kl"], help="add KL(teacher || student)")
    p.add_argument("--distill-weight", type=float, default=1.0, help="weight of the KL term (default 1)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="bf16 autocast or fp32; auto (default): bf16 on a GPU with bf16 or a CPU with bf16 units "
                        "(AVX512_BF16, AMX, Arm BF16), fp32 elsewhere (emulated bf16 is 3-4x slower; "
                        "see docs/PERFORMANCE.md)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    p.add_argument("--checkpoint-every", type=int, default=25, help="optimizer steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from <out>.work/")
    p.add_argument("--no-merge", action="store_true", help="save the LoRA adapter separately (out/adapter)")
    p.add_argument("--sequence-parallel", type=int, default=1, metavar="N",
                   help="under torchrun: split every sequence over N processes (LASP-2; the liger recipe, "
                   "all layers linearized); the processes form WORLD_SIZE / N data-parallel replicas (default 1)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the frozen weights over the processes (FSDP2), for models that do "
                   "not fit one device; the trained tensors stay replicated (see docs/SCALING.md)")
    p.add_argument("--dist-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long to wait for the other processes at the rendezvous and at "
                   "every collective before failing with an error (default 1800)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_linearize)


def options_from_args(args: argparse.Namespace):
    from ..cli import liger_config_from_args, softmax_auto_count
    from .job import JobOptions
    from .loop import TrainConfig

    if args.seq_len < 16:
        raise ConfigError("--seq-len must be >= 16")
    max_tokens = args.max_tokens
    if max_tokens is None and args.max_steps is None:
        max_tokens = DEFAULT_MAX_TOKENS
    train = TrainConfig(
        warmup_steps=args.warmup_steps, schedule=args.schedule, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_steps=args.max_steps, max_tokens=max_tokens,
        max_minutes=args.max_minutes or None, precision=args.precision, checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    name = "bundled" if args.model == "bundled" else args.model.rstrip("/").split("/")[-1]
    return JobOptions(
        model=args.model, out=args.out or f"runs/liger-{name}", recipe=args.recipe,
        liger=liger_config_from_args(args), softmax_auto=softmax_auto_count(args), data=args.data,
        seq_len=args.seq_len, eval_blocks=args.eval_blocks,
        distill_weight=args.distill_weight if args.distill == "kl" else 0.0, lr=args.lr,
        transfer_lr=args.transfer_lr, transfer_tokens=args.transfer_tokens, lora_r=args.lora_r, train=train,
        merge=not args.no_merge, resume=args.resume, grad_checkpointing=args.gradient_checkpointing,
        progress=not args.quiet, sequence_parallel=args.sequence_parallel, fsdp=args.fsdp,
        dist_timeout=args.dist_timeout,
    )


def cmd_linearize(args: argparse.Namespace) -> None:
    from .job import run_linearize

    opts = options_from_args(args)
    report = run_linearize(opts)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    print(f"wrote {opts.out}: held-out perplexity {report['student_ppl']:.2f} vs. teacher "
          f"{report['teacher_ppl']:.2f} ({report['ratio']:.2f}x); {report['tokens_trained']:,} tokens in "
          f"{report['train_seconds'] / 60:.1f} min (see {opts.out}/report.md)")
