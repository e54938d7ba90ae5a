"""The main job, `liger linearize`: convert a pretrained model, train it back, evaluate, save.

Work in progress lives in `<out>.work/` (checkpoints, training log, the metrics measured so far); the
output folder appears only at the end, complete (atomic rename). `--resume` continues from the work
folder; a successful run removes it.
"""

from __future__ import annotations

import datetime
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import atomic_output_dir
from ..config import LigerConfig
from ..errors import CheckpointError, ConfigError, DataError
from ..models import load_model
from ..arch import ARCHITECTURES
from ..surgery import linearize, model_type
from .loop import Trainer, TrainConfig, read_checkpoint_state
from .recipes import build_stages, count_parameters, trainable_parameters


@dataclass
class JobOptions:
    model: str = "bundled"
    out: str = "runs/liger"
    recipe: str = "liger"
    liger: LigerConfig = field(default_factory=LigerConfig)
    data: str = "builtin"
    seq_len: int = 512
    eval_blocks: int = 24
    distill_weight: float = 0.0
    lr: float | None = None
    transfer_lr: float | None = None
    transfer_tokens: int | None = None  # budget of the attention-transfer stage (lolcats)
    lora_r: int = 8
    train: TrainConfig = field(default_factory=TrainConfig)
    merge: bool = True
    resume: bool = False
    grad_checkpointing: bool = False
    progress: bool = True

    def fingerprint(self) -> dict:
        d = asdict(self)
        for k in ("out", "resume", "progress"):
            d.pop(k)
        d["train"].pop("max_minutes")  # a resumed run may get more time
        return json.loads(json.dumps(d))


def perplexity(model, blocks) -> float:
    from ..evaluate.perplexity import perplexity as lm_perplexity

    return lm_perplexity(model, blocks, batch_size=4)["perplexity"]


def _log(msg: str, opts: JobOptions) -> None:
    if opts.progress:
        print(msg, file=sys.stderr, flush=True)


def _load_data(opts: JobOptions, tok, teacher):
    from ..data import load_corpus, pack

    corpus = load_corpus(opts.data, tokenizer=tok, model=teacher, seed=opts.train.seed)
    train = pack(corpus.train, tok, opts.seq_len)
    heldout = pack(corpus.heldout, tok, opts.seq_len)[: opts.eval_blocks]
    if heldout.shape[0] == 0:
        raise DataError(f"the held-out split of {opts.data!r} is shorter than one {opts.seq_len}-token block")
    return corpus, train, heldout


def run_linearize(opts: JobOptions) -> dict:
    """Run the whole job; returns the report (also written to `out/report.json`)."""
    out = Path(opts.out).expanduser()
    work = out.parent / (out.name + ".work")
    started = time.time()
    if opts.resume:
        if read_checkpoint_state(work) is None:
            raise CheckpointError(f"nothing to resume: {work} holds no checkpoint; run without --resume")
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.parent.glob(f".{work.name}*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)

    torch.manual_seed(opts.train.seed)
    _log(f"loading {opts.model}", opts)
    model, tok = load_model(opts.model, dtype=torch.float32)
    teacher = None
    if opts.distill_weight > 0:
        teacher, _ = load_model(opts.model, dtype=torch.float32)
        for p in teacher.parameters():
            p.requires_grad_(False)
    corpus, train_blocks, heldout = _load_data(opts, tok, model)
    _log(f"data: {corpus.source}: {train_blocks.numel():,} training tokens, {heldout.numel():,} held-out", opts)

    metrics_path = work / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if "teacher_ppl" not in metrics:
        _log("held-out perplexity of the teacher", opts)
        metrics["teacher_ppl"] = perplexity(model, heldout)
    linearize(model, opts.liger)
    model.config.liger_teacher = opts.model
    if "converted_ppl" not in metrics:
        _log("held-out perplexity right after conversion", opts)
        metrics["converted_ppl"] = perplexity(model, heldout)
    metrics_path.write_text(json.dumps(metrics, indent=2))
    _log(f"teacher {metrics['teacher_ppl']:.2f}, converted {metrics['converted_ppl']:.1f}", opts)

    if opts.grad_checkpointing:
        model.gradient_checkpointing_enable()
    spec = ARCHITECTURES[model_type(model)]
    stages = build_stages(opts.recipe, spec, teacher, opts.distill_weight, opts.lr, opts.transfer_lr, opts.lora_r)
    ckpt = read_checkpoint_state(work) if opts.resume else None
    stage_names = [s.name for s in stages]
    resume_at = stage_names.index(ckpt["stage"]) if ckpt else 0
    results, trained_params = [], 0
    for i, stage in enumerate(stages):
        model = stage.prepare(model)
        params = trainable_parameters(model)
        trained_params += count_parameters(params)
        final_file = work / f"stage-{stage.name}.safetensors"
        if i < resume_at:  # finished before the interruption: restore its result
            tensors = load_file(str(final_file))
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(tensors[n])
            results.append(json.loads((work / f"stage-{stage.name}.json").read_text()))
            model = stage.finish(model)
            continue
        cfg = TrainConfig(**{**asdict(opts.train), "lr": stage.lr})
        if stage.name == "attention_transfer" and opts.transfer_tokens:
            cfg.max_tokens, cfg.max_steps = opts.transfer_tokens, None
        trainer = Trainer(model, params, train_blocks, stage.loss, cfg, work, stage.name, opts.fingerprint(),
                          show_progress=opts.progress)
        done = False
        if ckpt is not None and i == resume_at:
            trainer.load_checkpoint()
            done = ckpt["done"]
            _log(f"resumed stage {stage.name} at step {trainer.step}", opts)
        _log(f"stage {stage.name}: {count_parameters(params):,} trainable parameters, lr {cfg.lr:g}", opts)
        res = trainer.run(done=done)
        result = {"stage": stage.name, "steps": res.steps, "tokens": res.tokens, "seconds": round(res.seconds, 1),
                  "stopped_by": res.stopped_by, "final_loss": res.final_loss, "lr": cfg.lr,
                  "trainable_parameters": count_parameters(params)}
        save_file({n: p.detach().contiguous() for n, p in params.items()}, str(final_file))
        (work / f"stage-{stage.name}.json").write_text(json.dumps(result))
        results.append(result)
        model = stage.finish(model) if (opts.merge or stage.name != "lora") else model

    _log("held-out perplexity after training", opts)
    metrics["student_ppl"] = perplexity(model, heldout)
    report = _report(opts, metrics, results, trained_params, corpus, train_blocks, heldout, time.time() - started)
    _log(f"teacher {metrics['teacher_ppl']:.2f}, student {metrics['student_ppl']:.2f} "
         f"({report['ratio']:.2f}x), converted {metrics['converted_ppl']:.1f}", opts)
    _save(model, tok, out, work, report, opts)
    shutil.rmtree(work, ignore_errors=True)
    return report


def _report(opts, metrics, results, trained_params, corpus, train_blocks, heldout, seconds) -> dict:
    from ..bench.common import header

    return {
        **header(),
        "model": opts.model,
        "recipe": opts.recipe,
        "liger": opts.liger.to_dict(),
        "data": corpus.source,
        "seq_len": opts.seq_len,
        "train_tokens_available": int(train_blocks.numel()),
        "heldout_tokens": int(heldout.numel()),
        "teacher_ppl": metrics["teacher_ppl"],
        "converted_ppl": metrics["converted_ppl"],
        "student_ppl": metrics["student_ppl"],
        "ratio": metrics["student_ppl"] / metrics["teacher_ppl"],
        "tokens_trained": sum(r["tokens"] for r in results),
        "train_seconds": sum(r["seconds"] for r in results),
        "wall_seconds": round(seconds, 1),
        "trainable_parameters": trained_params,
        "distill_weight": opts.distill_weight,
        "stages": results,
        "train_config": asdict(opts.train),
        "merged": opts.merge,
    }


def _save(model, tok, out: Path, work: Path, report: dict, opts: JobOptions) -> None:
    from .report import loss_plot, report_markdown

    with atomic_output_dir(out) as tmp:
        if hasattr(model, "peft_config"):  # --no-merge: the linearized base model plus the adapter
            model.save_pretrained(tmp / "adapter")
            model.unload().save_pretrained(tmp)
        else:
            model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        log = work / "train_log.jsonl"
        if log.is_file():
            shutil.copy2(log, tmp / "train_log.jsonl")
            loss_plot(log, tmp / "loss.png")
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        (tmp / "report.md").write_text(report_markdown(report, has_plot=log.is_file()))
