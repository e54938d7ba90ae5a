"""Decode profile: where one single-token decode step of the original and of the linearized bundled teacher
spends its time, at one context length (default 8,192) and batch sizes 1 and 8 (float32 unless --weights says otherwise, no gradient).

Each model decodes from `liger.evaluate.efficiency.synthetic_cache` (the shapes a prefill of the context
would leave) under `torch.profiler` (CPU). Forward hooks mark each part of the step with a
`record_function` range, so the profile splits the step by module, inclusive times:
- attention: every decoder layer's attention module (projections, RoPE, the cache update, the kernel),
- mlp: every decoder layer's MLP,
- lm_head: the output layer (the 49K-vocabulary projection of the last position),
- other: the rest of the step (embedding, norms, residual adds, the framework's mask and cache bookkeeping),
and lists the operators with the most self time. Profiling adds overhead to every operator, so the step
times here are above the unprofiled medians of `liger bench model`; compare shares, not milliseconds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from ..arch import decoder_layers
from ..cache import CACHE_KWARG, output_cache
from ..errors import ConfigError
from ..evaluate.efficiency import synthetic_cache
from ..runinfo import header
from .common import (fused_decode_note, header_markdown, load_pair, log, markdown_table, target_row,
                     targets_markdown, write_results)

PARTS = ("attention", "mlp", "lm_head")
FULL_CONTEXT = 8192
QUICK_CONTEXT = 512
FULL_BATCHES = (1, 8)
QUICK_BATCHES = (1,)
STEP = "liger.decode_step"


@contextlib.contextmanager
def parts_marked(model: nn.Module):
    """Within the block every attention module, MLP and the output layer of `model` runs inside a
    `record_function("liger.<part>")` range (forward pre/post hooks)."""
    modules = [(f"liger.{part}", getattr(layer, name)) for layer in decoder_layers(model)
               for part, name in (("attention", "self_attn"), ("mlp", "mlp")) if hasattr(layer, name)]
    modules.append(("liger.lm_head", model.get_output_embeddings()))
    handles = []
    for label, module in modules:
        def pre(mod, args, label=label):
            mod._liger_range = record_function(label)
            mod._liger_range.__enter__()

        def post(mod, args, output):
            mod._liger_range.__exit__(None, None, None)
            del mod._liger_range

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def profile_decode(model: nn.Module, context: int, batch: int, steps: int = 8, top: int = 8) -> dict:
    """Profile `steps` decode steps of `model` ([batch, 1] ids) from a synthetic cache of `context` tokens.

    Returns {"step_ms": mean profiled ms per step, "parts": {part: ms per step} for PARTS and "other",
    "ops": [{"op", "self_ms_per_step", "share"}] (the `top` operators by self CPU time)}."""
    if steps < 1:
        raise ConfigError("--steps must be >= 1")
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (batch, 1), generator=torch.Generator().manual_seed(0))
    cache = synthetic_cache(model, batch, context)
    for _ in range(2):  # warm-up
        cache = output_cache(model(ids, use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache}))
    with parts_marked(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function(STEP):
                cache = output_cache(model(ids, use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache}))
    events = prof.key_averages()
    inclusive = {e.key: e.cpu_time_total / 1e3 / steps for e in events}  # ms per step
    step_ms = inclusive[STEP]
    parts = {part: inclusive.get(f"liger.{part}", 0.0) for part in PARTS}
    parts["other"] = step_ms - sum(parts.values())
    ops = sorted((e for e in events if not e.key.startswith("liger.")), key=lambda e: e.self_cpu_time_total,
                 reverse=True)[:top]
    return {"step_ms": step_ms, "parts": parts,
            "ops": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                     "share": e.self_cpu_time_total / 1e3 / steps / step_ms} for e in ops]}


@dataclass
class ProfileOptions:
    """What `run` profiles (the flags of `liger bench profile`); a size left None is the full default, or with
    `quick` the quick one."""

    context: int | None = None  # context tokens in the cache: FULL_CONTEXT / QUICK_CONTEXT
    profile_batch_sizes: tuple[int, ...] | None = None  # FULL_BATCHES / QUICK_BATCHES
    steps: int = 8  # profiled decode steps
    quick: bool = False
    tiny_model: bool = False  # a tiny random Llama instead of the bundled teacher (tests)
    weights: str = "float32"  # both models' weight format (liger.quantize)
    fused_decode: bool = False  # the linear layers' decode step as one compiled graph (liger.ops.fused_decode)


def run(opts: ProfileOptions, out: str | Path, command: str | None = None) -> dict:
    """Profile both models' decode step; write results.json / .md to `out`."""
    context = opts.context or (QUICK_CONTEXT if opts.quick else FULL_CONTEXT)
    batches = opts.profile_batch_sizes or (QUICK_BATCHES if opts.quick else FULL_BATCHES)
    head = header(command)
    original, linearized, what = load_pair(opts.tiny_model, opts.weights)
    what += fused_decode_note(opts.fused_decode)
    rows = []
    for B in batches:
        for name, model in (("original", original), ("linearized", linearized)):
            r = profile_decode(model, context, B, opts.steps)
            rows.append({"model": name, "batch": B, **r})
            log(f"profile {name} L={context} B={B}: {r['step_ms']:.1f} ms/step "
                + ", ".join(f"{k} {v:.1f}" for k, v in r["parts"].items()))
    payload = {**head, "models": what, "context": context, "steps": opts.steps, "rows": rows}
    payload["targets"] = profile_targets(rows)
    write_results(out, "results", payload, profile_markdown(payload))
    return payload


def profile_targets(rows: list[dict]) -> list[dict]:
    """Per batch: the non-attention part of the profiled step (mlp + lm_head + other), linearized / original."""
    rest = {(r["model"], r["batch"]): r["step_ms"] - r["parts"]["attention"] for r in rows}
    return [target_row(f"non-attention part of the profiled decode step no slower than the original's (batch {B}): "
                       "linearized / original", rest[("linearized", B)] / rest[("original", B)], 1.05,
                       higher_is_better=False, note="threshold 1.05: 5% timing noise allowed")
            for B in sorted({r["batch"] for r in rows})]


def profile_markdown(p: dict) -> str:
    parts = [*PARTS, "other"]
    table = [{"model": r["model"], "batch": r["batch"], "step_ms": r["step_ms"],
              **{f"{k}_ms": r["parts"][k] for k in parts},
              **{f"{k}_share": r["parts"][k] / r["step_ms"] for k in parts}} for r in p["rows"]]
    md = [f"# Decode step profile at {p['context']:,} tokens of context\n\n{header_markdown(p)}",
          f"Models: {p['models']}. Mean of {p['steps']} profiled single-token steps (torch.profiler, CPU) from a "
          "synthetic cache; ms per step, inclusive time of each part (see liger.bench.profile). Profiling "
          "inflates every operator, so compare shares, not milliseconds, with `liger bench model`.", "",
          "## Targets\n", targets_markdown(p["targets"]), "", "## Parts of the step\n",
          markdown_table(table, ["model", "batch", "step_ms", *[f"{k}_ms" for k in parts],
                                 *[f"{k}_share" for k in parts]],
                         ["model", "batch", "step ms", *[f"{k} ms" for k in parts], *[f"{k} share" for k in parts]])]
    for r in p["rows"]:
        md += ["", f"## Top operators by self time: {r['model']}, batch {r['batch']}\n",
               markdown_table(r["ops"], ["op", "self_ms_per_step", "share"], ["operator", "self ms/step", "share"])]
    return "\n".join(md)
