"""`liger eval`: the linearized model and its teacher side by side, on the same inputs.

Sections (each optional): lm (held-out perplexity, top-1 agreement, KL to the teacher), tasks (offline
zero-shot cloze and continuation multiple choice), recall (passkey grid and MQAR), efficiency (prefill and
decode speed, memory), lm_eval (lm-evaluation-harness tasks). Writes eval.json, eval.md and PNG plots.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_output_dir
from ..errors import ConfigError
from ..models import load_model

SECTIONS = ("lm", "tasks", "recall", "efficiency", "lm_eval")


@dataclass
class EvalOptions:
    model: str
    teacher: str | None = None  # default: the checkpoint's recorded teacher, else "bundled"
    out: str | None = None  # default: <model>/eval
    sections: tuple[str, ...] = ("lm", "tasks", "recall", "efficiency")
    data: str = "builtin"
    seq_len: int = 512
    blocks: int = 24
    items: int = 100
    recall_lengths: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    passkey_samples: int = 1
    mqar_pairs: tuple[int, ...] = (4, 8, 16, 32)
    eff_lengths: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
    batch_sizes: tuple[int, ...] = (1, 8)
    decode_tokens: int = 8
    tasks: tuple[str, ...] = ()
    lm_eval_limit: int | None = None
    batch_size: int = 4
    seed: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw) -> "EvalOptions":
        """Small sizes for a first look (a few minutes on a 2-core CPU)."""
        base = dict(blocks=8, items=40, recall_lengths=(256, 512, 1024), depths=(0.0, 0.5, 1.0), mqar_pairs=(4, 8),
                    eff_lengths=(256, 512, 1024), batch_sizes=(1, 2), decode_tokens=4)
        return cls(**{**base, **kw})


def _log(msg: str, opts: EvalOptions) -> None:
    if opts.progress:
        print(msg, file=sys.stderr, flush=True)


def _check(opts: EvalOptions, limit: int | None) -> None:
    bad = [s for s in opts.sections if s not in SECTIONS]
    if bad:
        raise ConfigError(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    if "lm_eval" in opts.sections:
        if not opts.tasks:
            raise ConfigError("the lm_eval section needs --tasks")
        from .lm_eval_adapter import resolve_tasks

        resolve_tasks(list(opts.tasks))  # unknown names fail now, not after the other sections
    lengths = [*opts.recall_lengths] * ("recall" in opts.sections) + [*opts.eff_lengths] * ("efficiency" in opts.sections)
    if opts.seq_len and "lm" in opts.sections:
        lengths.append(opts.seq_len)
    if limit is not None and any(L > limit for L in lengths):
        raise ConfigError(
            f"context length {max(lengths)} is beyond the model's limit of {limit} tokens "
            "(max_position_embeddings); lower --lengths / --recall-lengths / --seq-len"
        )
    if any(L < 1 for L in lengths) or opts.blocks < 1 or opts.items < 0:
        raise ConfigError("lengths, --blocks must be >= 1 and --items >= 0")


def run_eval(opts: EvalOptions) -> dict:
    """Run the selected sections on both models; write eval.json, eval.md and the plots; return the results."""
    from ..bench.common import header
    from . import plots
    from .report import eval_markdown, summary_rows

    student, tok = load_model(opts.model, require_liger=True)
    student = student.float().eval()
    teacher_spec = opts.teacher or getattr(student.config, "liger_teacher", None) or "bundled"
    limit = getattr(student.config.get_text_config(), "max_position_embeddings", None)
    _check(opts, limit)
    _log(f"teacher: {teacher_spec}", opts)
    teacher, _ = load_model(teacher_spec, dtype=torch.float32)
    teacher.eval()
    models = {"teacher": teacher, "linearized": student}
    torch.manual_seed(opts.seed)
    res: dict = {**header(), "model": str(opts.model), "teacher": teacher_spec, "options": asdict(opts), "sections": {}}
    sec = res["sections"]

    if "lm" in opts.sections or "tasks" in opts.sections:
        from ..data import load_corpus, pack

        corpus = load_corpus(opts.data, tokenizer=tok, model=teacher, seed=opts.seed)
    if "lm" in opts.sections:
        from .perplexity import compare_lm

        blocks = pack(corpus.heldout, tok, opts.seq_len)[: opts.blocks]
        _log(f"language modelling on {blocks.shape[0]} held-out blocks of {opts.seq_len} tokens", opts)
        with tqdm(total=blocks.shape[0], desc="lm", disable=not opts.progress) as bar:
            sec["lm"] = {"data": corpus.source, **compare_lm(student, teacher, blocks, batch_size=opts.batch_size,
                                                             on_batch=bar.update)}
    if "tasks" in opts.sections:
        from .tasks import cloze_items, continuation_items, num_requests, score_items

        items = {"cloze": cloze_items(corpus.heldout, opts.items, opts.seed),
                 "continuation": continuation_items(corpus.heldout, opts.items, opts.seed)}
        sec["tasks"] = {}
        for name, its in items.items():
            sec["tasks"][name] = {}
            for label, m in models.items():
                with tqdm(total=num_requests(its), desc=f"{name} ({label})", disable=not opts.progress) as bar:
                    r = score_items(m, tok, its, batch_size=opts.batch_size, on_batch=bar.update)
                r.pop("predictions")
                sec["tasks"][name][label] = r
    if "recall" in opts.sections:
        from .recall import mqar_sweep, passkey_grid

        sec["recall"] = {"passkey": {}, "mqar": {}}
        for label, m in models.items():
            total = len(opts.recall_lengths) * len(opts.depths) * opts.passkey_samples
            with tqdm(total=total, desc=f"passkey ({label})", disable=not opts.progress) as bar:
                sec["recall"]["passkey"][label] = passkey_grid(m, tok, opts.recall_lengths, opts.depths,
                                                               opts.passkey_samples, opts.seed, lambda _: bar.update())
            sec["recall"]["mqar"][label] = mqar_sweep(m, tok, opts.mqar_pairs, seed=opts.seed)
    if "efficiency" in opts.sections:
        from .efficiency import measure

        sec["efficiency"] = {}
        for label, m in models.items():
            total = len(opts.eff_lengths) * len(opts.batch_sizes)
            with tqdm(total=total, desc=f"efficiency ({label})", disable=not opts.progress) as bar:
                sec["efficiency"][label] = measure(m, opts.eff_lengths, opts.batch_sizes, opts.decode_tokens,
                                                   opts.seed, on_result=lambda _: bar.update())
    if "lm_eval" in opts.sections:
        from .lm_eval_adapter import run_lm_eval

        sec["lm_eval"] = {label: run_lm_eval(m, tok, list(opts.tasks), opts.batch_size, opts.lm_eval_limit, opts.seed)
                          for label, m in models.items()}

    res["summary"] = summary_rows(sec)
    out = Path(opts.out or Path(opts.model) / "eval")
    with atomic_output_dir(out, keep_other_files=False) as tmp:
        pngs = []
        if "lm" in sec:
            plots.nll_by_position(sec["lm"], tmp / "lm_by_position.png")
            pngs.append("lm_by_position.png")
        if "recall" in sec:
            for label, rows in sec["recall"]["passkey"].items():
                plots.passkey_heatmap(rows, f"passkey retrieval: {label}", tmp / f"passkey_{label}.png")
                pngs.append(f"passkey_{label}.png")
        if "efficiency" in sec:
            plots.efficiency_plot(sec["efficiency"], tmp / "efficiency.png")
            pngs.append("efficiency.png")
        res["plots"] = pngs
        (tmp / "eval.json").write_text(json.dumps(res, indent=2))
        (tmp / "eval.md").write_text(eval_markdown(res))
    return res
