"""`liger eval`: the linearized model and its teacher side by side, on the same inputs.

Sections (each optional): lm (perplexity, top-1 agreement and KL to the teacher on held-out in-domain blocks
and on out-of-domain blocks, liger.data.ood; perplexity by position bucket on one long out-of-domain document),
tasks (offline zero-shot cloze and continuation multiple choice), recall (passkey grid and MQAR), efficiency
(prefill and decode speed, memory), lm_eval (lm-evaluation-harness tasks). Writes eval.json, eval.md and PNG
plots.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_output_dir, check_writable
from ..data import load_corpus, pack
from ..data.ood import OOD_DESCRIPTION, ood_eval_data
from ..errors import CheckpointError, ConfigError, DataError
from ..cache import cache_footprint
from ..models import check_logits, load_model, max_positions, read_config
from ..quantize import check_format, quantize_weights
from ..surgery import reconfigure
from . import plots
from .efficiency import measure
from .lm_eval_adapter import check_tasks, run_lm_eval
from ..memory_estimate import ModelShape, check_fits, forward_bytes, inference_weights
from .perplexity import compare_lm
from .quality import compare_positions
from .recall import MQAR_KEYS, mqar_sweep, passkey_grid
from .report import eval_markdown, run_header, summary_rows
from .tasks import cloze_items, continuation_items, num_requests, score_items

SECTIONS = ("lm", "tasks", "recall", "efficiency", "lm_eval")
DEFAULT_SECTIONS = ("lm", "tasks", "recall", "efficiency")  # lm_eval joins them when tasks are given
DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192)
# `EvalOptions.quick`: small sizes for a first look (about 5-10 minutes on a 2-core CPU, bundled teacher).
QUICK = dict(blocks=8, ood_blocks=8, long_tokens=2048, items=40, recall_lengths=(256, 512, 1024),
             depths=(0.0, 0.5, 1.0), mqar_pairs=(4, 8), eff_lengths=(256, 512, 1024), batch_sizes=(1, 2),
             decode_tokens=4)


@dataclass
class EvalOptions:
    """What `run_eval` measures; see `liger eval --help` for each field."""

    model: str
    teacher: str | None = None  # default: the checkpoint's recorded teacher, else "bundled"
    out: str | None = None  # default: <model>/eval
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    data: str = "builtin"
    seq_len: int = 512
    blocks: int = 24
    ood_blocks: int = 24  # out-of-domain blocks of seq_len tokens (liger.data.ood)
    long_tokens: int = 8192  # the long out-of-domain document (0: none); capped at the model's limit
    items: int = 100
    recall_lengths: tuple[int, ...] = DEFAULT_LENGTHS
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    passkey_samples: int = 1
    mqar_pairs: tuple[int, ...] = (4, 8, 16, 32)
    eff_lengths: tuple[int, ...] = DEFAULT_LENGTHS
    batch_sizes: tuple[int, ...] = (1, 8)
    decode_tokens: int = 8
    tasks: tuple[str, ...] = ()
    lm_eval_limit: int | None = None
    batch_size: int = 4
    seed: int = 0
    progress: bool = True
    command: str | None = None  # recorded in the report; default: sys.argv
    sparse_cache: int | None = None  # set the checkpoint's sparse-cache budget before measuring (None: as saved)
    weights: str = "float32"  # the student's weight format (liger.quantize); the teacher stays float32
    # Lengths the user gave explicitly ("recall_lengths", "eff_lengths", "long_tokens"): beyond the model's limit
    # they are an error; defaults are capped.
    explicit_lengths: tuple[str, ...] = ()

    @classmethod
    def quick(cls, **kw) -> "EvalOptions":
        """The QUICK sizes, for a first look; `kw` wins."""
        return cls(**{**QUICK, **kw})


def _log(msg: str, opts: EvalOptions) -> None:
    if opts.progress:
        print(msg, file=sys.stderr, flush=True)


def recorded_teacher(model_dir: str, model: torch.nn.Module) -> str | None:
    """The teacher a checkpoint records: `liger_teacher` in its config (written by `liger linearize`) or a
    "teacher" entry of its "liger" config."""
    name = getattr(model.config, "liger_teacher", None)
    if name:
        return str(name)
    try:
        raw = json.loads((Path(model_dir).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    liger = raw.get("liger")
    return liger.get("teacher") if isinstance(liger, dict) else None


def check_options(opts: EvalOptions, limit: int | None) -> EvalOptions:
    """Validate `opts` against the model's context limit (`max_position_embeddings`); default length lists are
    capped at the limit, explicit ones beyond it raise ConfigError. Returns the (possibly capped) options."""
    bad = [s for s in opts.sections if s not in SECTIONS]
    if bad or not opts.sections:
        raise ConfigError(f"unknown section(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    check_format(opts.weights)
    if "lm_eval" in opts.sections and not opts.tasks:
        raise ConfigError("the lm_eval section needs --tasks (e.g. --tasks piqa,arc_easy or a task YAML path)")
    if opts.tasks and "lm_eval" not in opts.sections:
        raise ConfigError("--tasks is given but --sections leaves out lm_eval; add it to --sections")
    for name, value in [("--seq-len", opts.seq_len), ("--blocks", opts.blocks), ("--ood-blocks", opts.ood_blocks),
                        ("--items", opts.items),
                        ("--passkey-samples", opts.passkey_samples), ("--batch-size", opts.batch_size)]:
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if opts.long_tokens < 0:
        raise ConfigError(f"--long-tokens must be >= 0, got {opts.long_tokens}")
    if opts.decode_tokens < 0:
        raise ConfigError(f"--decode-tokens must be >= 0, got {opts.decode_tokens}")
    if opts.lm_eval_limit is not None and opts.lm_eval_limit < 1:
        raise ConfigError(f"--lm-eval-limit must be >= 1, got {opts.lm_eval_limit}")
    if any(not 0 <= d <= 1 for d in opts.depths) or not opts.depths:  # `not 0 <= d` catches nan too
        raise ConfigError(f"--depths must be numbers between 0 and 1, got {list(opts.depths)}")
    if not opts.mqar_pairs or any(not 1 <= n <= len(MQAR_KEYS) for n in opts.mqar_pairs):
        raise ConfigError(f"--mqar-pairs must be between 1 and {len(MQAR_KEYS)}, got {list(opts.mqar_pairs)}")
    if not opts.batch_sizes or any(b < 1 for b in opts.batch_sizes):
        raise ConfigError(f"--batch-sizes must be >= 1, got {list(opts.batch_sizes)}")
    flags = {"recall_lengths": "--recall-lengths", "eff_lengths": "--lengths"}
    for name, flag in flags.items():
        lengths = getattr(opts, name)
        if not lengths or any(L < 1 for L in lengths):
            raise ConfigError(f"{flag} must be positive token counts, got {list(lengths)}")
        if limit is None:
            continue
        if name in opts.explicit_lengths:
            over = [L for L in lengths if L > limit]
            if over:
                raise ConfigError(f"{flag} {','.join(map(str, over))} is beyond the model's limit of {limit} tokens "
                                  f"(max_position_embeddings); use lengths up to {limit}")
        else:
            setattr(opts, name, tuple(L for L in lengths if L <= limit) or (limit,))
    if limit is not None and opts.long_tokens > limit:
        if "long_tokens" in opts.explicit_lengths:
            raise ConfigError(f"--long-tokens {opts.long_tokens} is beyond the model's limit of {limit} tokens "
                              f"(max_position_embeddings); use at most {limit}")
        opts.long_tokens = limit
    if limit is not None and "lm" in opts.sections and opts.seq_len > limit:
        raise ConfigError(f"--seq-len {opts.seq_len} is beyond the model's limit of {limit} tokens "
                          "(max_position_embeddings)")
    if "recall" in opts.sections and min(opts.recall_lengths) < 128:
        raise ConfigError("--recall-lengths must be >= 128 tokens (a passkey prompt needs about 100)")
    return opts


def output_dir(opts: EvalOptions) -> Path:
    """The output folder; an existing one may hold only files an earlier `liger eval` wrote (it is replaced
    as a whole), anything else raises ConfigError rather than be deleted."""
    out = Path(opts.out or Path(opts.model) / "eval").expanduser()
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a folder; choose another output folder")
        foreign = [p.name for p in out.iterdir() if not (p.is_file() and (p.suffix == ".png" or p.name in
                                                                           ("eval.json", "eval.md")))]
        if foreign:
            raise ConfigError(f"--out {out} holds files that are not an eval report ({', '.join(sorted(foreign)[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); it would be replaced: choose another folder")
    return out


def memory_parts(opts: EvalOptions, shape: ModelShape) -> dict[str, float]:
    """The estimated peak memory of `run_eval` (see liger.memory_estimate): both models' float32
    weights (the teacher taken as the checkpoint's size: it is the model it was converted from), plus the
    largest transient of the sections: lm (every position's log-probabilities of both models), recall (one
    passkey prompt) and efficiency (the largest prefill); the teacher's softmax layers cache every token. The
    long document of the lm section keeps both models' logits (2 x L x V float32) and a few 256-position
    chunks of log-probabilities."""
    transients = [{}]
    if "lm" in opts.sections:
        transients.append(forward_bytes(shape, opts.batch_size * opts.seq_len, full_logits=True))
        if opts.long_tokens >= 2:
            transients.append({**forward_bytes(shape, opts.long_tokens),
                               "logits": (2 * opts.long_tokens + 6 * 256) * shape.vocab * 4})
    if "recall" in opts.sections:
        transients.append(forward_bytes(shape, max(opts.recall_lengths), cached_layers=shape.layers))
    if "efficiency" in opts.sections:
        tokens = max(opts.batch_sizes) * max(opts.eff_lengths)
        transients.append(forward_bytes(shape, tokens, cached_layers=shape.layers))
    return {"weights": 2 * inference_weights(shape, 4), **max(transients, key=lambda t: sum(t.values()))}


def preflight(opts: EvalOptions) -> EvalOptions:
    """Before anything loads: the options against the checkpoint's config (its context limit), the estimated
    peak memory against the memory available. Returns the (possibly capped) options."""
    config = read_config(opts.model)
    if config is None:  # a missing or broken checkpoint: the load says why
        return opts
    check_options(opts, max_positions(config))
    fix = ("lower --batch-size, --seq-len, --long-tokens, --lengths, --batch-sizes or --recall-lengths (or leave "
           "out sections with --sections)")
    check_fits(memory_parts(opts, ModelShape(config)), f"eval of {opts.model}", fix)
    return opts


def _check_forward(model: torch.nn.Module, spec: str) -> None:
    """CheckpointError if a first short forward pass of `model` gives NaN or +inf logits."""
    vocab = model.config.get_text_config().vocab_size
    ids = torch.arange(8).remainder(vocab)[None].to(next(model.parameters()).device)
    with torch.no_grad():
        check_logits(model(ids, use_cache=False).logits, spec)


def _load(opts: EvalOptions):
    student, tok = load_model(opts.model, require_liger=True, finite=True)
    if opts.sparse_cache is not None:  # training-free: the same weights with another sparse-cache budget
        reconfigure(student, sparse_cache=opts.sparse_cache)
    student = quantize_weights(student.float().eval(), opts.weights)
    teacher_spec = opts.teacher or recorded_teacher(opts.model, student) or "bundled"
    limit = getattr(student.config.get_text_config(), "max_position_embeddings", None)
    check_options(opts, limit)
    if "lm_eval" in opts.sections:
        check_tasks(list(opts.tasks))  # unknown names and unreachable datasets fail now, not after an hour
    _log(f"teacher: {teacher_spec}", opts)
    teacher, teacher_tok = load_model(teacher_spec, dtype=torch.float32, finite=True)
    teacher.eval()
    for model, spec in ((student, opts.model), (teacher, teacher_spec)):
        _check_forward(model, spec)
    if teacher.config.get_text_config().vocab_size != student.config.get_text_config().vocab_size or (
        teacher_tok.get_vocab() != tok.get_vocab()
    ):
        raise CheckpointError(f"the teacher {teacher_spec} does not share the checkpoint's tokenizer; pass the "
                              "model it was converted from with --teacher")
    return student, teacher, teacher_spec, tok


def _heldout(opts: EvalOptions, tok, teacher) -> tuple[list[str], str]:
    corpus = load_corpus(opts.data, tokenizer=tok, model=teacher)
    if not corpus.heldout:
        raise DataError(f"the data source {opts.data!r} has no held-out documents; use a larger source")
    return corpus.heldout, corpus.source


def _bar(opts: EvalOptions, total: int, desc: str):
    return tqdm(total=total, desc=desc, disable=not opts.progress, file=sys.stderr, leave=False)


def run_eval(opts: EvalOptions) -> dict:
    """Run the selected sections on both models; write eval.json, eval.md and the plots into the output folder
    (atomically); return the results (as in eval.json, plus "out")."""
    out = output_dir(opts)
    check_writable(out)
    preflight(opts)
    student, teacher, teacher_spec, tok = _load(opts)
    models = {"teacher": teacher, "linearized": student}
    header = run_header()
    if opts.command:
        header["command"] = opts.command
    res: dict = {**header, "model": str(opts.model), "teacher": teacher_spec, "options": asdict(opts), "sections": {}}
    sec = res["sections"]
    torch.manual_seed(opts.seed)

    if "lm" in opts.sections or "tasks" in opts.sections:
        heldout, source = _heldout(opts, tok, teacher)
    if "lm" in opts.sections:
        sec["lm"] = _lm_section(opts, student, teacher, tok, heldout, source)
    if "tasks" in opts.sections:
        sec["tasks"] = _tasks_section(opts, models, tok, heldout)
    if "recall" in opts.sections:
        sec["recall"] = _recall_section(opts, models, tok)
    if "efficiency" in opts.sections:
        with _bar(opts, len(models) * len(opts.eff_lengths) * len(opts.batch_sizes), "efficiency") as bar:
            rows = measure(models, opts.eff_lengths, opts.batch_sizes, opts.decode_tokens, opts.seed,
                           on_result=lambda _: bar.update())
        sec["efficiency"] = {label: [r for r in rows if r["model"] == label] for label in models}
    if "lm_eval" in opts.sections:
        sec["lm_eval"] = {}
        for label, m in models.items():
            _log(f"lm-eval ({label}): {', '.join(opts.tasks)}", opts)
            sec["lm_eval"][label] = run_lm_eval(m, tok, list(opts.tasks), opts.batch_size, opts.lm_eval_limit,
                                                opts.seed)

    res["summary"] = summary_rows(sec)
    with atomic_output_dir(out, keep_other_files=False) as tmp:
        res["plots"] = plots.draw_all(sec, tmp)
        (tmp / "eval.json").write_text(json.dumps(res, indent=2))
        (tmp / "eval.md").write_text(eval_markdown(res))
    res["out"] = str(out)
    return res


def _lm_section(opts: EvalOptions, student, teacher, tok, heldout: list[str], source: str) -> dict:
    blocks = pack(heldout, tok, opts.seq_len)[: opts.blocks]
    if blocks.shape[0] == 0:
        raise DataError(f"the held-out text of {opts.data!r} fills no {opts.seq_len}-token block; lower --seq-len")
    limit = getattr(teacher.config.get_text_config(), "max_position_embeddings", None)
    long_tokens = min(opts.long_tokens, limit) if limit else opts.long_tokens
    ood, long_ids = ood_eval_data(tok, opts.seq_len, opts.ood_blocks, long_tokens=long_tokens)
    _log(f"language modelling on {blocks.shape[0]} held-out and {ood.shape[0]} out-of-domain blocks of "
         f"{opts.seq_len} tokens" + (f", and one {long_ids.shape[1]}-token out-of-domain document"
                                     if long_ids is not None else ""), opts)
    with _bar(opts, blocks.shape[0] + ood.shape[0], "lm (both models)") as bar:
        sec = {"data": source, **compare_lm(student, teacher, blocks, batch_size=opts.batch_size,
                                            on_batch=bar.update)}
        sec["ood"] = {"data": OOD_DESCRIPTION, **compare_lm(student, teacher, ood, batch_size=opts.batch_size,
                                                            on_batch=bar.update)}
    if long_ids is not None:
        _log(f"perplexity by position on {long_ids.shape[1]} out-of-domain tokens", opts)
    sec["positions"] = compare_positions(student, teacher, long_ids) if long_ids is not None else None
    return sec


def _tasks_section(opts: EvalOptions, models: dict, tok, heldout: list[str]) -> dict:
    items = {"cloze": cloze_items(heldout, opts.items, opts.seed),
             "continuation": continuation_items(heldout, opts.items, opts.seed)}
    sec: dict = {}
    for name, its in items.items():
        if not its:
            raise DataError(f"the held-out text of {opts.data!r} is too short to build {name} items")
        sec[name] = {}
        for label, m in models.items():
            with _bar(opts, num_requests(its), f"{name} ({label})") as bar:
                r = score_items(m, tok, its, batch_size=opts.batch_size, on_batch=bar.update)
            r.pop("predictions")
            sec[name][label] = r
    return sec


def _recall_section(opts: EvalOptions, models: dict, tok) -> dict:
    sec: dict = {"passkey": {}, "mqar": {}, "cache_bytes": {}}
    for label, m in models.items():
        fp = cache_footprint(m)  # one sequence's cache at the longest prompt, beside every recall figure
        sec["cache_bytes"][label] = fp["fixed"] + max(opts.recall_lengths) * fp["per_token"]
        total = len(opts.recall_lengths) * len(opts.depths) * opts.passkey_samples
        with _bar(opts, total, f"passkey ({label})") as bar:
            sec["passkey"][label] = passkey_grid(m, tok, opts.recall_lengths, opts.depths, opts.passkey_samples,
                                                 opts.seed, lambda _: bar.update())
        with _bar(opts, 2 * len(opts.mqar_pairs), f"mqar ({label})") as bar:
            sec["mqar"][label] = mqar_sweep(m, tok, opts.mqar_pairs, seed=opts.seed, on_probe=lambda _: bar.update())
    return sec
