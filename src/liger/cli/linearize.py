"""`liger linearize`: the flags of the main job (liger.train.job)."""

from __future__ import annotations

import argparse
import os

from ..arch import spec_for
from ..errors import ConfigError
from ..memory_estimate import ModelShape, check_fits, forward_bytes, inference_weights, job_device, training_bytes
from ..models import read_config
from ..teacher import BUNDLED
from ..train.job import (DEFAULT_MAX_MINUTES, DEFAULT_MAX_TOKENS, DEFAULT_RECIPE, JobOptions, long_document_tokens,
                         run_linearize, summary_line)
from ..train.loop import PRECISIONS, SCHEDULES, TrainConfig
from ..mixers.attention import ALIGNMENT_METRICS
from ..train.tracking import CHOICES as TRACKERS, parse_report_to
from ..train.recipes import ALIGN_LR, LORA_LR, RECIPES, TRANSFER_LR, uses_teacher
from .flags import (COUNT, NON_NEGATIVE, POSITIVE, SEED, Bounds, add_liger_config_args, check_against_model,
                    liger_config_from_args, number, sci)

DISTILL_WEIGHT = 1.0  # --distill-weight's default (the weight applies with --distill kl only)
QUALITY_LOGITS = 2.5  # the report's long document: two models' logits, and the chunk being scored


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "linearize",
        help="convert, train back, evaluate and save (the main job)",
        description="Linearize a model, recover its quality with a little training, and report held-out "
        "perplexity of the teacher, the converted model and the trained model.",
    )
    p.add_argument("--model", default=JobOptions.model, help=f"model folder, hub id or {JobOptions.model!r} (default)")
    p.add_argument("--out", default=None, help="output folder (default: runs/liger-<model>)")
    p.add_argument("--recipe", default=None, choices=RECIPES,
                   help="liger: LoRA on q/k/v, cross-entropy; lolcats: attention transfer of the feature maps, then "
                   "LoRA on q/k/v/o; align: each layer's output fit to the teacher's attention (LoRA on q/k/v "
                   "and the mixer's parameters); distill: KL to the teacher; staged: align, then distill "
                   f"(default {DEFAULT_RECIPE}; staged for --mixer native_gdn, whose output gate starts closed)")
    add_liger_config_args(p)
    _add_data_args(p)
    _add_training_args(p)
    _add_run_args(p)
    p.set_defaults(func=cmd_linearize)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=JobOptions.data,
                   help="builtin (default, offline), self or self:N (N teacher-generated samples, default 256; "
                   "~100 tokens/s to generate on 2 cores, cached), recall or recall:N (N synthetic passkey/"
                   "associative-recall episodes, default 4000, offline), a hub dataset id, a save_to_disk folder, "
                   ".txt/.jsonl/.parquet files or folders, or a mix of these joined by + in equal shares "
                   "(e.g. builtin+self:512); a part given @F (0<F<1) gets that fraction of the training text and "
                   "the others split the rest (e.g. builtin+recall@0.1)")
    number(p, "--seq-len", bounds=Bounds(16), default=JobOptions.seq_len,
           help=f"tokens per packed training sequence (default {JobOptions.seq_len})")
    number(p, "--eval-blocks", bounds=COUNT, default=JobOptions.eval_blocks,
           help=f"held-out blocks for perplexity, in-domain and out-of-domain (default {JobOptions.eval_blocks})")
    number(p, "--long-tokens", bounds=NON_NEGATIVE, default=JobOptions.long_tokens,
           help="tokens of the long out-of-domain document whose perplexity by position the report shows, capped "
           f"at the model's context limit (default {JobOptions.long_tokens}; 0 = none)")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    number(p, "--max-tokens", bounds=COUNT, default=None,
           help=f"training token budget (default {DEFAULT_MAX_TOKENS:,} unless --max-steps is given)")
    number(p, "--max-steps", bounds=COUNT, default=None, help="optimizer steps budget")
    number(p, "--max-minutes", type=float, bounds=Bounds(0, note="(0 = no time budget)"), default=DEFAULT_MAX_MINUTES,
           help=f"training time budget in minutes (default {DEFAULT_MAX_MINUTES:g}; 0 = none)")
    number(p, "--lr", type=float, bounds=POSITIVE, default=None,
           help=f"learning rate of the LoRA stage (default {sci(LORA_LR)})")
    number(p, "--warmup-steps", bounds=NON_NEGATIVE, default=TrainConfig.warmup_steps)
    p.add_argument("--schedule", default=TrainConfig.schedule, choices=SCHEDULES)
    number(p, "--batch-size", bounds=COUNT, default=TrainConfig.batch_size,
           help=f"sequences per micro-batch (default {TrainConfig.batch_size})")
    number(p, "--grad-accum", bounds=COUNT, default=TrainConfig.grad_accum,
           help=f"micro-batches per optimizer step (default {TrainConfig.grad_accum})")
    number(p, "--lora-r", bounds=COUNT, default=JobOptions.lora_r, help=f"LoRA rank (default {JobOptions.lora_r})")
    number(p, "--transfer-lr", type=float, bounds=POSITIVE, default=None,
           help=f"lr of the lolcats attention transfer (default {sci(TRANSFER_LR)}) and of the align stage "
           f"(default {sci(ALIGN_LR)})")
    p.add_argument("--align-metric", default=JobOptions.align_metric, choices=ALIGNMENT_METRICS,
                   help="align stage: the error of each layer's output to the teacher's attention output: mse, nmse "
                   "(MSE / mean square of the target) or cosine (default %(default)s)")
    number(p, "--align-fraction", type=float, bounds=Bounds(0, 1, open_low=True, open_high=True),
           default=JobOptions.align_fraction,
           help="staged recipe: the share of the token/step/time budget spent on alignment (default %(default)s)")
    number(p, "--kl-weight", type=float, bounds=NON_NEGATIVE, default=JobOptions.kl_weight,
           help="distill/staged recipes: weight of KL(teacher || student) (default %(default)s)")
    number(p, "--ce-weight", type=float, bounds=NON_NEGATIVE, default=JobOptions.ce_weight,
           help="distill/staged recipes: weight of the next-token cross-entropy (default %(default)s)")
    number(p, "--transfer-tokens", bounds=COUNT, default=None,
           help="token budget of the lolcats attention-transfer stage (default: same as --max-tokens)")
    p.add_argument("--distill", default="none", choices=["none", "kl"], help="add KL(teacher || student)")
    number(p, "--distill-weight", type=float, bounds=NON_NEGATIVE, default=None,
           help=f"weight of the KL term, with --distill kl (default {DISTILL_WEIGHT:g})")
    p.add_argument("--precision", default=TrainConfig.precision, choices=PRECISIONS,
                   help="bf16 autocast or fp32; auto (default): bf16 on a GPU with bf16 or a CPU with bf16 units "
                        "(AVX512_BF16, AMX, Arm BF16), fp32 elsewhere (emulated bf16 is 3-4x slower; "
                        "see docs/PERFORMANCE.md)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    number(p, "--checkpoint-every", bounds=Bounds(0, note="(0 = at the end of each stage only)"),
           default=TrainConfig.checkpoint_every, help="optimizer steps between checkpoints")
    number(p, "--seed", bounds=SEED, default=TrainConfig.seed)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from <out>.work/")
    p.add_argument("--no-merge", action="store_true", help="save the LoRA adapter separately (out/adapter)")
    number(p, "--sequence-parallel", bounds=COUNT, default=JobOptions.sequence_parallel, metavar="N",
           help="under torchrun: split every sequence over N processes (LASP-2; the liger recipe, "
           "all layers linearized); the processes form WORLD_SIZE / N data-parallel replicas "
           f"(default {JobOptions.sequence_parallel})")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the frozen weights over the processes (FSDP2), for models that do "
                   "not fit one device; the trained tensors stay replicated (see docs/SCALING.md)")
    number(p, "--dist-timeout", type=float, bounds=POSITIVE, default=JobOptions.dist_timeout, metavar="SECONDS",
           help="under torchrun: how long to wait for the other processes at the rendezvous and at "
           f"every collective before failing with an error (default {JobOptions.dist_timeout:g})")
    p.add_argument("--report-to", type=_report_to, default=JobOptions.report_to, metavar="|".join(TRACKERS),
                   help="also log the training log's scalars (per stage, e.g. lora/loss) and the run's options to "
                   "these experiment trackers, comma-separated (default none): TensorBoard event files and an "
                   "offline wandb run (unless WANDB_MODE is set) in <out>/tracking/ (<out>.work/tracking/ while "
                   "training), Trackio in its local store; each needs its package (pip install tensorboard)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _report_to(text: str) -> tuple[str, ...]:
    try:
        return parse_report_to(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def options_from_args(args: argparse.Namespace) -> JobOptions:
    if args.distill_weight is not None and args.distill != "kl":
        raise ConfigError(f"--distill-weight {args.distill_weight:g} weighs the KL term of --distill kl, which is "
                          "off; add --distill kl or drop --distill-weight")
    distill_weight = DISTILL_WEIGHT if args.distill_weight is None else args.distill_weight
    max_tokens = args.max_tokens
    if max_tokens is None and args.max_steps is None:
        max_tokens = DEFAULT_MAX_TOKENS
    train = TrainConfig(
        warmup_steps=args.warmup_steps, schedule=args.schedule, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_steps=args.max_steps, max_tokens=max_tokens,
        max_minutes=args.max_minutes or None, precision=args.precision, checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    liger, softmax_auto = liger_config_from_args(args)
    name = BUNDLED if args.model == BUNDLED else args.model.rstrip("/").split("/")[-1]
    return JobOptions(
        model=args.model, out=args.out or f"runs/liger-{name}",
        recipe=args.recipe,
        liger=liger, softmax_auto=softmax_auto, softmax_select=args.softmax_select, data=args.data,
        seq_len=args.seq_len, eval_blocks=args.eval_blocks,
        distill_weight=distill_weight if args.distill == "kl" else 0.0, lr=args.lr,
        transfer_lr=args.transfer_lr, transfer_tokens=args.transfer_tokens, lora_r=args.lora_r, train=train,
        kl_weight=args.kl_weight, ce_weight=args.ce_weight, align_metric=args.align_metric,
        align_fraction=args.align_fraction, long_tokens=args.long_tokens,
        merge=not args.no_merge, resume=args.resume, grad_checkpointing=args.gradient_checkpointing,
        progress=not args.quiet, sequence_parallel=args.sequence_parallel, fsdp=args.fsdp,
        dist_timeout=args.dist_timeout, report_to=args.report_to,
    )


def preflight(opts: JobOptions) -> None:
    """The checks that need the model's config (read without the weights; skipped if it cannot be read so, the
    load then says why): a supported architecture, --window within its context limit, one training micro-batch
    within memory."""
    config = read_config(opts.model)
    if config is None:
        return
    spec_for(config)  # an unsupported architecture fails here, before any work
    check_against_model(opts.liger, config)
    if opts.fsdp:  # sharded weights: the estimate does not model them
        return
    t = opts.train
    tokens = t.batch_size * -(-opts.seq_len // max(1, opts.sequence_parallel))
    distill = uses_teacher(opts.recipe, opts.recipe_options())
    parts = training_bytes(ModelShape(config), tokens, distill=distill, checkpointing=opts.grad_checkpointing)
    fix = ("lower --batch-size (raise --grad-accum to keep the tokens per step) or --seq-len"
           + ("" if opts.grad_checkpointing else ", or add --gradient-checkpointing")
           + (", or drop --distill kl" if distill else ""))
    check_fits(parts, f"training {opts.model} at --batch-size {t.batch_size:,} x --seq-len {opts.seq_len:,}", fix,
               job_device())
    long_tokens = long_document_tokens(opts, config)
    if long_tokens:  # the report's long document: both models' logits of every position (measured: 5.0 GB peak
        shape = ModelShape(config)  # for the bundled teacher at 8,192 tokens; this estimates 5.5 GB)
        parts = {"weights": inference_weights(shape, 4), **forward_bytes(shape, long_tokens),
                 "logits": long_tokens * shape.vocab * 4 * QUALITY_LOGITS}
        check_fits(parts,
                   f"the report's {long_tokens:,}-token out-of-domain document", "lower --long-tokens (0 = none)",
                   job_device())


def cmd_linearize(args: argparse.Namespace) -> None:
    opts = options_from_args(args)
    preflight(opts)
    report = run_linearize(opts)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    print(f"wrote {opts.out}: {summary_line(report)}; {report['tokens_trained']:,} tokens in "
          f"{report['train_seconds'] / 60:.1f} min (see {opts.out}/report.md)")
