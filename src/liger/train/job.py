"""The main job, `liger linearize`: convert a pretrained model, train it back, evaluate, save.

Work in progress lives in `<out>.work/` (checkpoints, training log, the metrics measured so far, and with
`--report-to` the trackers' files, see tracking.py); the output folder appears only at the end, complete
(atomic rename). `--resume` continues from the work folder; a successful run removes it. Before any work
the run checks what a user can get wrong (the flags, that `--out` can be written; with `--resume`, every file
of the work folder, which is read as safetensors and JSON only); the work folder is created (or, without
`--resume`, an old one replaced) only once the model and the data have loaded, and a failed run that created it
and saved no checkpoint removes it again.

Under torchrun / accelerate launch (WORLD_SIZE > 1) the job runs on every process: rank 0 loads first (hub
downloads, the bundled teacher's conversion), every rank checks that it holds the same data, evaluation is
split over the ranks, training is data parallel (and sequence parallel with `sequence_parallel > 1`), and
only rank 0 writes the work folder and the output. The work and output folders must be on a filesystem
every rank can read (one node, or a shared filesystem) for `--resume`. With `fsdp`, the frozen weights are
sharded over the ranks right after loading (liger.distributed.sharding) and every forward pass, evaluation
included, runs on all ranks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..arch import ARCHITECTURES, arch_spec, model_type
from ..atomic import atomic_file, atomic_output_dir, check_writable, remove_stale_siblings
from ..config import LigerConfig
from ..data import Corpus, load_corpus, pack
from ..distributed.runtime import DEFAULT_TIMEOUT_S, ParallelContext, init_distributed
from ..distributed.sequence import SequenceParallelLoss, check_sequence_parallel_model
from ..distributed.sharding import full_state_dict, is_sharded, place_replicated, shard_frozen
from ..errors import CheckpointError, ConfigError, DataError
from ..data.ood import OOD_DESCRIPTION, ood_eval_data
from ..evaluate.perplexity import perplexity as lm_perplexity
from ..evaluate.quality import quality
from ..layer_scores import DEFAULT_SELECT, check_select, resolve_auto
from ..models import load_model, max_positions
from ..runinfo import header
from ..surgery import linearize
from .loop import (START_OVER, Trainer, TrainConfig, check_checkpoint, check_fingerprint, check_safetensors,
                   check_tensors_fit, read_checkpoint_state, read_json, read_tensors, resolve_precision)
from .recipes import (RecipeOptions, Stage, build_stages, check_recipe_options, count_parameters, merge_lora,
                      trainable_parameters, uses_teacher)
from .shared_teacher import SharedTeacher
from .tracking import SUBDIR as TRACKING_DIR, Tracking, check_available, open_tracking, report_scalars
from .report import loss_plot, quality_plots, report_markdown

# Budgets of the main job on the bundled teacher, sized so that the whole run (training, then about 5 minutes
# of conversion, evaluation and saving) takes about 25 minutes on a 2-core CPU (see docs/RESULTS.md for what
# they reach): the token budget applies unless a step budget is given.
DEFAULT_MAX_TOKENS = 300_000
DEFAULT_MAX_MINUTES = 20.0
LONG_TOKENS = 8192  # the report's long out-of-domain document (capped at the model's context limit)


DEFAULT_RECIPE = "liger"
# Mixers with another default recipe: native_gdn's output gate starts closed, and cross-entropy alone does not
# open it in the default budget (docs/RESULTS.md, "The exportable form"): alignment first.
MIXER_RECIPES = {"native_gdn": "staged"}


@dataclass
class JobOptions:
    model: str = "bundled"
    out: str = "runs/liger"
    recipe: str | None = None  # None: MIXER_RECIPES' entry for the mixer, else DEFAULT_RECIPE
    liger: LigerConfig = field(default_factory=LigerConfig)
    softmax_auto: int = 0  # --softmax-layers auto:N: also keep N layers chosen from data as softmax (layer_scores)
    softmax_select: str = DEFAULT_SELECT  # the rule that chooses them (--softmax-select, layer_scores.SELECT_RULES)
    data: str = "builtin"
    seq_len: int = 512
    eval_blocks: int = 24
    distill_weight: float = 0.0
    lr: float | None = None
    transfer_lr: float | None = None
    transfer_tokens: int | None = None  # budget of the attention-transfer stage (lolcats)
    lora_r: int = 8
    kl_weight: float = RecipeOptions.kl_weight  # distill / staged recipes
    ce_weight: float = RecipeOptions.ce_weight
    align_metric: str = RecipeOptions.align_metric  # align / staged recipes
    align_fraction: float = RecipeOptions.align_fraction  # staged recipe
    long_tokens: int = LONG_TOKENS  # length of the long out-of-domain document of the report (0: none)
    train: TrainConfig = field(default_factory=TrainConfig)
    merge: bool = True
    resume: bool = False
    grad_checkpointing: bool = False
    progress: bool = True
    sequence_parallel: int = 1  # ranks that split each sequence (LASP-2); the others are data parallel
    fsdp: bool = False  # shard the frozen weights over the ranks (liger.distributed.sharding)
    dist_timeout: float = DEFAULT_TIMEOUT_S  # seconds for the rendezvous and every collective
    report_to: tuple[str, ...] = ()  # experiment trackers fed train_log.jsonl's scalars (train/tracking.py)

    def __post_init__(self) -> None:
        if self.recipe is None:
            self.recipe = MIXER_RECIPES.get(self.liger.mixer, DEFAULT_RECIPE)

    def fingerprint(self) -> dict:
        d = asdict(self)
        for k in ("out", "resume", "progress", "dist_timeout", "report_to"):
            d.pop(k)
        if d["sequence_parallel"] == 1:  # as before the option existed: older checkpoints still resume
            d.pop("sequence_parallel")
        for k in ("softmax_auto", "fsdp"):  # as before the options existed, when off
            if not d[k]:
                d.pop(k)
        if not self.softmax_auto or self.softmax_select == "transfer":  # unused, or the rule before the option
            d.pop("softmax_select")
        d["train"].pop("max_minutes")  # a resumed run may get more time
        d.pop("long_tokens")  # evaluation only
        if d["recipe"] not in ("align", "distill", "staged"):  # as before the options existed
            for k in ("kl_weight", "ce_weight", "align_metric", "align_fraction"):
                d.pop(k)
        return json.loads(json.dumps(d))

    def recipe_options(self) -> RecipeOptions:
        return RecipeOptions(distill_weight=self.distill_weight, lr=self.lr, transfer_lr=self.transfer_lr,
                             lora_r=self.lora_r, kl_weight=self.kl_weight, ce_weight=self.ce_weight,
                             align_metric=self.align_metric, align_fraction=self.align_fraction)


def perplexity(model, blocks, par: ParallelContext | None = None, batch_size: int = 4) -> float:
    """Held-out perplexity; with several ranks each evaluates every world-th block and the summed NLLs are
    combined (the same number as one process, up to float rounding). On a sharded model (FSDP) every rank
    runs as many forward passes as the busiest one (extra passes are discarded): its all-gathers are
    collectives."""
    if par is None or not par.distributed:
        return lm_perplexity(model, blocks, batch_size=batch_size)["perplexity"]
    mine = blocks[par.rank :: par.world]
    stats = torch.zeros(2, dtype=torch.float64)
    if mine.shape[0]:
        r = lm_perplexity(model, mine, batch_size=batch_size)
        stats = torch.tensor([r["nll"] * r["tokens"], r["tokens"]], dtype=torch.float64)
    if is_sharded(model):
        most = math.ceil(math.ceil(blocks.shape[0] / par.world) / batch_size)
        with torch.no_grad(), par.guard("the held-out perplexity (sharded forward)"):
            for _ in range(most - math.ceil(mine.shape[0] / batch_size)):
                model(blocks[:1].to(par.device))
    stats = stats.to(par.device)
    par.all_reduce_sum([stats], "the held-out perplexity")
    return math.exp(stats[0].item() / stats[1].item())


def _log(msg: str, opts: JobOptions) -> None:
    if opts.progress:
        print(msg, file=sys.stderr, flush=True)


def _load_data(opts: JobOptions, tok, teacher):
    corpus = load_corpus(opts.data, tokenizer=tok, model=teacher, seed=opts.train.seed)
    train = pack(corpus.train, tok, opts.seq_len)
    heldout = pack(corpus.heldout, tok, opts.seq_len)[: opts.eval_blocks]
    if heldout.shape[0] == 0:
        raise DataError(f"the held-out split of {opts.data!r} is shorter than one {opts.seq_len}-token block")
    return corpus, train, heldout


def run_linearize(opts: JobOptions) -> dict:
    """Run the whole job; returns the report (also written to `out/report.json`). Under torchrun (WORLD_SIZE
    > 1) every process runs it (see the module docstring); the process group is set up and torn down here."""
    check_writable(opts.out)  # first: an unwritable --out fails before the process group or any model loads
    par = init_distributed(opts.dist_timeout, opts.sequence_parallel)
    try:
        return _run(opts if par.is_main else dataclasses.replace(opts, progress=False), par)
    finally:
        par.shutdown()


def _check_sequence_parallel(opts: JobOptions) -> None:
    if opts.sequence_parallel <= 1:
        return
    if opts.recipe != "liger" or opts.distill_weight > 0:
        raise ConfigError("--sequence-parallel trains with the liger recipe's cross-entropy only (no lolcats "
                          "attention transfer, no --distill: both need the softmax teacher's whole sequences)")
    if opts.seq_len < opts.sequence_parallel:
        raise ConfigError(f"--seq-len {opts.seq_len} is shorter than --sequence-parallel {opts.sequence_parallel}")


def _check_fsdp(opts: JobOptions, par: ParallelContext) -> None:
    if not opts.fsdp:
        return
    if not par.distributed:
        raise ConfigError("--fsdp shards the model over several processes; launch with torchrun --nproc-per-node N "
                          "(N >= 2), or drop --fsdp")
    if not opts.merge:
        raise ConfigError("--fsdp saves the merged model only; drop --no-merge")


def _run(opts: JobOptions, par: ParallelContext) -> dict:
    started = time.time()
    out, work = _check_start(opts, par)
    torch.manual_seed(opts.train.seed)
    opts = _with_precision(opts, par)
    model, tok = _load_models(opts, par)
    arch_spec(model)  # an unsupported architecture fails here, before any work
    with par.main_first("loading the data"):
        corpus, train_blocks, heldout = _load_data(opts, tok, model)
        evalsets = _eval_sets(opts, tok, model, heldout)
    par.check_same(train_blocks, "training data")
    par.check_same(heldout, "held-out data")
    _log(f"data: {corpus.source}: {train_blocks.numel():,} training tokens, {heldout.numel():,} held-out", opts)
    created = _open_work_folder(opts, par, out, work)
    try:
        opts, model, report = _convert_train_evaluate(opts, par, work, model, tok, corpus, train_blocks, heldout,
                                                      evalsets, started)
    except BaseException:
        if created and par.is_main and not (work / "checkpoint" / "state.json").exists():
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from: leave nothing behind
        raise
    state = full_state_dict(model, par) if opts.fsdp else None  # every rank gathers the shards; rank 0 writes
    if par.is_main:
        _save(model, tok, out, work, report, opts, state)
        shutil.rmtree(work, ignore_errors=True)
    par.barrier("saving the output")
    return report


def _convert_train_evaluate(opts: JobOptions, par: ParallelContext, work: Path, model, tok, corpus, train_blocks,
                            heldout, evalsets: dict, started: float):
    """Linearize, train and measure `model`, keeping progress in `work`; returns (opts with the layers chosen,
    the trained model (adapters merged unless --no-merge), the report)."""
    metrics_path = work / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    opts = _convert(model, tok, opts, par, metrics, train_blocks, heldout)
    teacher = SharedTeacher(model)  # before any training: the converted model in teacher mode is the original
    if "converted_quality" not in metrics and _measures_quality(par):
        _log("quality of the converted model (in-domain, out-of-domain, by position)", opts)
        metrics["converted_quality"] = quality(model, teacher, evalsets["sets"], evalsets["long"],
                                               progress=opts.progress)
    if "converted_quality" in metrics:  # the in-domain figures are its held-out set's
        heldout_figures = metrics["converted_quality"]["sets"]["heldout"]
        metrics.setdefault("teacher_ppl", heldout_figures["teacher_ppl"])
        metrics.setdefault("converted_ppl", heldout_figures["student_ppl"])
    if par.is_main:
        with atomic_file(metrics_path) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    _log(f"teacher {metrics['teacher_ppl']:.2f}, converted {metrics['converted_ppl']:.1f}", opts)
    tracking = open_tracking(opts.report_to, work, out_name(opts), asdict(opts), par.is_main)
    try:
        model, results, trained_params = _train(model, teacher, opts, par, work, train_blocks, tracking)
        opts, model, report = _evaluate_trained(opts, par, model, teacher, metrics, results, trained_params, corpus,
                                                train_blocks, heldout, evalsets, started)
        tracking.log(report_scalars(report), sum(r["steps"] for r in results))
    finally:
        tracking.finish()
    return opts, model, report


def out_name(opts: JobOptions) -> str:
    """The run's name in the trackers: the output folder's name."""
    return Path(opts.out).expanduser().absolute().name


def _evaluate_trained(opts: JobOptions, par: ParallelContext, model, teacher, metrics: dict, results: list[dict],
                      trained_params: int, corpus, train_blocks, heldout, evalsets: dict, started: float):
    """Measure the trained model, merge its adapters unless --no-merge; returns (opts, model, report)."""
    if _measures_quality(par):
        _log("quality of the trained model (in-domain, out-of-domain, by position)", opts)
        teacher.set_student(model)
        metrics["trained_quality"] = quality(model, teacher, evalsets["sets"], evalsets["long"],
                                             progress=opts.progress)
        metrics["student_ppl"] = metrics["trained_quality"]["sets"]["heldout"]["student_ppl"]
    else:
        _log("held-out perplexity after training", opts)
        metrics["student_ppl"] = perplexity(model, heldout, par)
    if opts.merge:
        model = merge_lora(model)
    report = _report(opts, metrics, results, trained_params, corpus, train_blocks, heldout, time.time() - started)
    _log(summary_line(report), opts)
    return opts, model, report


def _measures_quality(par: ParallelContext) -> bool:
    """The out-of-domain and by-position figures are measured by single-process runs (a long document is one
    sequence; its split over ranks is not built)."""
    return not par.distributed


def _eval_sets(opts: JobOptions, tok, model, heldout) -> dict:
    """{"sets": {"heldout": in-domain blocks, "ood": out-of-domain blocks}, "long": one long out-of-domain
    document [1, L] or None, "long_tokens": L}, L at most --long-tokens and the model's context limit."""
    ood, long_ids = ood_eval_data(tok, opts.seq_len, opts.eval_blocks,
                                  long_tokens=long_document_tokens(opts, model.config))
    return {"sets": {"heldout": heldout, "ood": ood}, "long": long_ids}


def long_document_tokens(opts: JobOptions, config) -> int:
    """Length of the report's long out-of-domain document: --long-tokens, capped at the model's context limit."""
    return min(opts.long_tokens, max_positions(config) or opts.long_tokens)


def summary_line(r: dict) -> str:
    """The run's one-line result: out-of-domain and long-context figures first."""
    parts = []
    q = r.get("quality", {}).get("trained")
    if q:
        o = q["sets"]["ood"]
        parts.append(f"out-of-domain ppl {o['student_ppl']:.2f} vs teacher {o['teacher_ppl']:.2f} "
                     f"({o['ratio']:.2f}x), top-1 agreement {o['top1']:.2f}, KL {o['kl']:.3f}")
        if q.get("positions"):
            p = q["positions"]
            parts.append(f"by position {'/'.join(f'{x:.2f}' for x in p['ratio'])}x the teacher "
                         f"({'/'.join(_bucket_name(b) for b in p['buckets'])})")
    parts.append(f"in-domain ppl {r['student_ppl']:.2f} vs teacher {r['teacher_ppl']:.2f} ({r['ratio']:.2f}x), "
                 f"converted {r['converted_ppl']:.1f}")
    return "; ".join(parts)


def _bucket_name(b) -> str:
    return "-".join(f"{x // 1024}K" if x >= 1024 and x % 1024 == 0 else str(x) for x in b)


def _check_start(opts: JobOptions, par: ParallelContext) -> tuple[Path, Path]:
    """(output folder, work folder), after the checks that need no model: the flags, the folders, and with
    --resume every file of the work folder. Changes nothing on disk."""
    check_recipe_options(opts.recipe, opts.recipe_options())
    check_select(opts.softmax_select)
    check_available(opts.report_to)
    _check_sequence_parallel(opts)
    _check_fsdp(opts, par)
    out = Path(opts.out).expanduser()
    work = out.parent / (out.name + ".work")
    check_writable(work, "the work folder")  # --out: checked by run_linearize
    if opts.resume:
        _check_work_folder(work)
    return out, work


def _check_work_folder(work: Path) -> None:
    """Before a resumed run loads anything: the work folder holds a checkpoint of this format, and none of
    its files is missing, truncated or corrupted (CheckpointError naming the file otherwise)."""
    if check_checkpoint(work) is None:
        raise CheckpointError(f"nothing to resume: {work} holds no checkpoint; run without --resume")
    metrics = read_json(work / "metrics.json") if (work / "metrics.json").exists() else {}
    for key in ("teacher_ppl", "converted_ppl"):
        if key in metrics and not isinstance(metrics[key], (int, float)):
            raise CheckpointError(f"{work / 'metrics.json'} is corrupted (its {key!r} is not a number); {START_OVER}")
    for path in sorted(work.glob("stage-*.json")):
        result = read_json(path)
        if not all(isinstance(result.get(k), (int, float)) for k in ("steps", "tokens", "seconds")):
            raise CheckpointError(f"{path} is corrupted (no steps, tokens and seconds); {START_OVER}")
    for path in sorted(work.glob("stage-*.safetensors")):
        check_safetensors(path)


def _open_work_folder(opts: JobOptions, par: ParallelContext, out: Path, work: Path) -> bool:
    """Make the work folder ready once the run has passed its checks: a fresh one, or (--resume) the one
    holding the checkpoint; remove what killed earlier writes of the output left beside it. Returns whether
    this run created the work folder."""
    par.barrier("starting the run")  # every rank has read the work folder before rank 0 changes it
    created = not opts.resume
    if par.is_main:
        if not opts.resume and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        for target in (out, work, work / "checkpoint"):
            remove_stale_siblings(target)
    par.barrier("preparing the work folder")
    return created


def _with_precision(opts: JobOptions, par: ParallelContext) -> JobOptions:
    """`opts` with precision "auto" resolved for this device."""
    precision = resolve_precision(opts.train.precision, par.device.type)
    if precision == opts.train.precision:
        return opts
    _log(f"precision {opts.train.precision}: {precision} on this {par.device.type}", opts)
    return dataclasses.replace(opts, train=dataclasses.replace(opts.train, precision=precision))


def _load_models(opts: JobOptions, par: ParallelContext):
    """(model, tokenizer): the model to convert, placed on this rank's device. The teacher is the model itself
    in teacher mode (SharedTeacher), made once it is converted."""
    _log(f"loading {opts.model}" + (f" on {par.world} processes" if par.distributed else ""), opts)
    with par.main_first("loading the model"):  # downloads and conversions happen once
        model, tok = load_model(opts.model, dtype=torch.float32, empty=opts.fsdp and not par.is_main)
    place(model, opts, par)
    return model, tok


def _convert(model, tok, opts: JobOptions, par: ParallelContext, metrics: dict, train_blocks, heldout
             ) -> JobOptions:
    """Linearize `model` in place; `--softmax-layers auto:N` is resolved first, by the rule of --softmax-select:
    the KL rules on the first KL_BLOCKS held-out blocks, `transfer` on the first training blocks, `recall` on
    passkey prompts of `tok`. Distributed runs measure the held-out perplexity before and after here (kept in
    `metrics`, which a resumed run brings); single-process runs take both from the converted model's quality
    figures. Returns `opts` with the layers it chose."""
    if "teacher_ppl" not in metrics and not _measures_quality(par):
        _log("held-out perplexity of the teacher", opts)
        metrics["teacher_ppl"] = perplexity(model, heldout, par)
    if opts.softmax_auto:  # the scores are kept for --resume
        if "layer_scores" not in metrics:
            on = {"transfer": "training blocks", "recall": "passkey prompts"}.get(opts.softmax_select,
                                                                                  "held-out blocks")
            _log(f"scoring the layers for --softmax-layers auto:{opts.softmax_auto} by --softmax-select "
                 f"{opts.softmax_select} (on {on})", opts)
        blocks = train_blocks if opts.softmax_select == "transfer" else heldout
        liger_cfg, metrics["layer_scores"] = resolve_auto(model, opts.liger, opts.softmax_auto, blocks,
                                                          metrics.get("layer_scores"), opts.softmax_select,
                                                          tokenizer=tok, progress=opts.progress)
        opts = dataclasses.replace(opts, liger=liger_cfg)
        _log(f"softmax layers chosen from data: {list(opts.liger.softmax_layers)}", opts)
    linearize(model, opts.liger)
    if opts.fsdp:  # the mixers' new parameters stay whole (they may train)
        place_replicated(model, par.device)
    model.config.liger_teacher = opts.model
    if "converted_ppl" not in metrics and not _measures_quality(par):
        _log("held-out perplexity right after conversion", opts)
        metrics["converted_ppl"] = perplexity(model, heldout, par)
    return opts


def _stages(model, teacher, opts: JobOptions, par: ParallelContext):
    """(stages of the recipe, the step context): under sequence parallelism every stage's loss is the
    sequence-parallel one, whose context splits each micro-batch."""
    spec = ARCHITECTURES[model_type(model)]
    stages = build_stages(opts.recipe, spec, teacher if uses_teacher(opts.recipe, opts.recipe_options()) else None,
                          opts.recipe_options())
    if par.sp <= 1:
        return stages, None
    check_sequence_parallel_model(model)
    sp_loss = SequenceParallelLoss(opts.seq_len, par.sp_group)
    return [dataclasses.replace(s, loss=sp_loss) for s in stages], sp_loss.context


def _resume_point(opts: JobOptions, par: ParallelContext, work: Path, fingerprint: dict,
                  stages: list[Stage]) -> dict | None:
    """The checkpoint to resume from (None: start from the beginning), checked against this run."""
    ckpt = read_checkpoint_state(work) if opts.resume else None
    if ckpt is None:
        return None
    made_with = ckpt["fingerprint"].get("world_size", 1)
    if made_with != par.world:
        raise CheckpointError(f"the checkpoint in {work} was made by {made_with} process(es), this run has "
                              f"{par.world}; resume with the same number (torchrun --nproc-per-node ...), or "
                              "start over without --resume")
    check_fingerprint(ckpt, fingerprint, work / "checkpoint")
    if ckpt["stage"] not in [s.name for s in stages]:
        raise CheckpointError(f"the checkpoint in {work / 'checkpoint'} is of a stage ({ckpt['stage']!r}) this "
                              f"recipe does not have; {START_OVER}")
    return ckpt


def _train(model, teacher, opts: JobOptions, par: ParallelContext, work: Path, train_blocks,
           tracking: Tracking | None = None):
    """Train the recipe's stages in turn (a stage finished before an interruption is restored, the one
    interrupted resumes); returns (model, the stages' results, trained parameters). Each training-log record
    also goes to `tracking`, at a step counted over all stages."""
    if opts.grad_checkpointing:
        model.gradient_checkpointing_enable()
    stages, step_context = _stages(model, teacher, opts, par)
    fingerprint = opts.fingerprint()
    if par.distributed:
        fingerprint["world_size"] = par.world  # the global batch and data shards depend on it
    ckpt = _resume_point(opts, par, work, fingerprint, stages)
    resume_at = [s.name for s in stages].index(ckpt["stage"]) if ckpt else 0
    results, trained = [], {}
    for i, stage in enumerate(stages):
        model = stage.prepare(model)
        params = trainable_parameters(model)
        trained.update({id(p): p.numel() for p in params.values()})  # a tensor two stages train counts once
        if i < resume_at:  # finished before the interruption: restore its result
            results.append(_restore_stage(stage, params, work))
            model = stage.finish(model)
            continue
        trainer = Trainer(model, params, train_blocks, stage.loss, _stage_config(stage, opts, results), work,
                          stage.name, fingerprint, show_progress=opts.progress, parallel=par,
                          step_context=step_context)
        if tracking is not None:
            offset = sum(r["steps"] for r in results)
            trainer.on_record = lambda record, offset=offset: tracking.log_record(record, offset)
        results.append(_train_stage(trainer, stage, opts, par, work, ckpt if i == resume_at else None))
        model = stage.finish(model)
    return model, results, sum(trained.values())


def _stage_config(stage: Stage, opts: JobOptions, before: list[dict]) -> TrainConfig:
    """The stage's training settings: its lr, and its part of the run's budgets (`stage.share` of each, or with
    `stage.rest` what the stages before it, whose results are `before`, left of each)."""
    t = opts.train
    cfg = TrainConfig(**{**asdict(t), "lr": stage.lr})
    if stage.name == "attention_transfer" and opts.transfer_tokens:
        cfg.max_tokens, cfg.max_steps = opts.transfer_tokens, None
    if stage.share is not None:
        cfg.max_tokens = t.max_tokens and max(1, round(t.max_tokens * stage.share))
        cfg.max_steps = t.max_steps and max(1, round(t.max_steps * stage.share))
        cfg.max_minutes = t.max_minutes and t.max_minutes * stage.share
    elif stage.rest:
        cfg.max_tokens = t.max_tokens and max(1, t.max_tokens - sum(r["tokens"] for r in before))
        cfg.max_steps = t.max_steps and max(1, t.max_steps - sum(r["steps"] for r in before))
        cfg.max_minutes = t.max_minutes and max(0.05, t.max_minutes - sum(r["seconds"] for r in before) / 60)
    return cfg


def _restore_stage(stage: Stage, params: dict, work: Path) -> dict:
    """Copy a finished stage's trained tensors back into `params`; returns its result."""
    path = work / f"stage-{stage.name}.safetensors"
    tensors = read_tensors(path)
    check_tensors_fit(tensors, params, path)
    result = read_json(work / f"stage-{stage.name}.json")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n])
    return result


def _train_stage(trainer: Trainer, stage: Stage, opts: JobOptions, par: ParallelContext, work: Path,
                 ckpt: dict | None) -> dict:
    """Train one stage (from `ckpt`, the interrupted run's checkpoint of it, if any); save its trained tensors
    and result to the work folder; returns the result."""
    done = False
    if ckpt is not None:
        trainer.load_checkpoint()
        done = ckpt["done"]
        _log(f"resumed stage {stage.name} at step {trainer.step}", opts)
    cfg, params = trainer.cfg, trainer.params
    _log(f"stage {stage.name}: {count_parameters(params):,} trainable parameters, lr {cfg.lr:g}", opts)
    res = trainer.run(done=done)
    result = {"stage": stage.name, "steps": res.steps, "tokens": res.tokens, "seconds": round(res.seconds, 1),
              "stopped_by": res.stopped_by, "final_loss": res.final_loss, "lr": cfg.lr,
              "trainable_parameters": count_parameters(params)}
    if par.is_main:
        with atomic_file(work / f"stage-{stage.name}.safetensors") as tmp:
            save_file({n: p.detach().contiguous() for n, p in params.items()}, str(tmp))
        with atomic_file(work / f"stage-{stage.name}.json") as tmp:
            tmp.write_text(json.dumps(result))
    par.barrier(f"saving stage {stage.name}")
    return result


def _report(opts: JobOptions, metrics: dict, results: list[dict], trained_params: int, corpus: Corpus, train_blocks,
            heldout, seconds: float) -> dict:
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
        **({"kl_weight": opts.kl_weight, "ce_weight": opts.ce_weight, "align_metric": opts.align_metric,
            "align_fraction": opts.align_fraction} if opts.recipe in ("align", "distill", "staged") else {}),
        "quality": {k: metrics[f"{k}_quality"] for k in ("converted", "trained") if f"{k}_quality" in metrics},
        "ood_data": OOD_DESCRIPTION,
        "stages": results,
        "train_config": asdict(opts.train),
        "merged": opts.merge,
        **({"layer_scores": metrics["layer_scores"]} if "layer_scores" in metrics else {}),
    }


def place(model, opts: JobOptions, par: ParallelContext) -> None:
    """Put a loaded model on this rank's device: whole, or (--fsdp) its shards of it."""
    if opts.fsdp:
        shard_frozen(model, par, from_rank0=True)  # the other ranks loaded it empty
    else:
        model.to(par.device)


def _save(model, tok, out: Path, work: Path, report: dict, opts: JobOptions, state: dict | None = None) -> None:
    """Write the output folder (atomically); `state`: the full state dict of a sharded model."""
    with atomic_output_dir(out) as tmp:
        if hasattr(model, "peft_config"):  # --no-merge: the linearized base model plus the adapter
            model.save_pretrained(tmp / "adapter")
            model.unload().save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, state_dict=state)
        tok.save_pretrained(tmp)
        log = work / "train_log.jsonl"
        if log.is_file():
            shutil.copy2(log, tmp / "train_log.jsonl")
            loss_plot(log, tmp / "loss.png")
        if (work / TRACKING_DIR).is_dir():  # --report-to's TensorBoard event files / wandb offline run
            shutil.copytree(work / TRACKING_DIR, tmp / TRACKING_DIR)
        positions = quality_plots(report, tmp)
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        (tmp / "report.md").write_text(report_markdown(report, has_plot=log.is_file(), has_positions=positions))
