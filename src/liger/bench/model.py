"""Model benchmark: the linearized bundled teacher against the original, at contexts 512 to 16,384 tokens and
batch sizes 1 and 8 (no gradient; float32 weights, or both models in the --weights format).

For each (context L, batch B), the two models back to back: prefill latency, median decode step, peak memory
and exact cache bytes, measured by `liger.evaluate.efficiency.measure` (the same function `liger eval` uses;
see its docstring). Prefill runs when B * L <= --max-prefill-tokens; beyond that the decode starts from a
synthetic cache of the right shapes (a decode step costs the same on either; the row says which was used).
- non-attention decode: each model's decode step with every attention module replaced by a stub that
  returns zeros, at batch 1 and 8 (embedding, norms, MLPs, the 49K-vocabulary output layer, the framework).

The teacher's max_position_embeddings is 8,192. The original runs beyond it anyway by default (its RoPE
extrapolates; fine for a speed measurement, not for quality); --skip-beyond-limit skips those rows instead.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..arch import decoder_layers
from ..errors import ConfigError
from ..evaluate.efficiency import measure
from ..runinfo import header
from ..teacher import teacher_gguf
from .peer import PEER, llama_cpp_rows, peer_markdown, peer_unavailable
from .common import (bar_plot, fused_decode_note, header_markdown, line_plot, load_pair, log, markdown_table,
                     target_row, targets_markdown, write_results)

FULL_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_CONTEXTS = (512, 2048)
FULL_BATCHES = (1, 8)
QUICK_BATCHES = (1,)
FULL_DECODE_TOKENS = 16
QUICK_DECODE_TOKENS = 8


@contextlib.contextmanager
def attention_stubbed(model: nn.Module):
    """Within the block every attention module of `model` returns zeros (and touches no cache)."""
    stubbed = []
    for layer in decoder_layers(model):
        attn = layer.self_attn
        attn.forward = lambda hidden_states, *args, **kwargs: (torch.zeros_like(hidden_states), None)
        stubbed.append(attn)
    try:
        yield model
    finally:
        for attn in stubbed:
            del attn.forward


@torch.no_grad()
def non_attention_decode_ms(models: dict[str, nn.Module], batch: int, steps: int = 16) -> dict[str, float]:
    """Median ms per model of a single-token forward ([batch, 1] ids) with its attention modules stubbed out
    (`attention_stubbed`); the models take turns step by step, so a drift in machine speed hits all alike."""
    vocab = min(m.config.get_text_config().vocab_size for m in models.values())
    ids = torch.randint(0, vocab, (batch, 1), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    with contextlib.ExitStack() as stack:
        for m in models.values():
            stack.enter_context(attention_stubbed(m))
        for i in range(steps + 2):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(ids, use_cache=True, logits_to_keep=1)
                if i >= 2:  # two warm-up steps
                    times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * sorted(ts)[len(ts) // 2] for name, ts in times.items()}


@dataclass
class ModelOptions:
    """What `run` measures (the flags of `liger bench model`); a size left None is the full default, or with
    `quick` the quick one."""

    contexts: tuple[int, ...] | None = None  # FULL_CONTEXTS / QUICK_CONTEXTS
    batch_sizes: tuple[int, ...] | None = None  # FULL_BATCHES / QUICK_BATCHES
    decode_tokens: int | None = None  # FULL_DECODE_TOKENS / QUICK_DECODE_TOKENS
    max_prefill_tokens: int = 16384  # prefill only when batch * context <= this, else a synthetic cache
    skip_beyond_limit: bool = False  # skip the original beyond its max_position_embeddings
    quick: bool = False
    tiny_model: bool = False  # a tiny random Llama instead of the bundled teacher (tests)
    peer: str | None = None  # "llama.cpp": also time the teacher's GGUF in llama.cpp (liger.bench.peer)
    weights: str = "float32"  # both models' weight format (liger.quantize)
    fused_decode: bool = False  # the linear layers' decode step as one compiled graph (liger.ops.fused_decode)


def run(opts: ModelOptions, out: str | Path, command: str | None = None) -> dict:
    """Run the model benchmark; write results.json / .md / PNGs to `out`."""
    contexts = opts.contexts or (QUICK_CONTEXTS if opts.quick else FULL_CONTEXTS)
    batches = opts.batch_sizes or (QUICK_BATCHES if opts.quick else FULL_BATCHES)
    decode_tokens = opts.decode_tokens
    if decode_tokens is None:
        decode_tokens = QUICK_DECODE_TOKENS if opts.quick else FULL_DECODE_TOKENS
    if decode_tokens < 1:
        raise ConfigError("--decode-tokens must be >= 1")
    head = header(command)
    original, linearized, what = load_pair(opts.tiny_model, opts.weights)
    what += fused_decode_note(opts.fused_decode)
    limit = original.config.get_text_config().max_position_embeddings
    models = {"original": original, "linearized": linearized}

    def log_row(row: dict) -> None:
        log(f"model {row['model']} L={row['context']} B={row['batch']}: prefill {row['prefill_s'] or 0:.2f} s, "
            f"decode {row['decode_ms']:.1f} ms/step")

    rows = measure(models, contexts, batches, decode_tokens, max_prefill_tokens=opts.max_prefill_tokens,
                   skip=lambda name, L, B: name == "original" and L > limit and opts.skip_beyond_limit,
                   on_result=log_row)
    for row in rows:
        row["beyond_position_limit"] = row["model"] == "original" and row["context"] > limit
    non_attention = []
    for B in batches:
        ms = non_attention_decode_ms(models, B, 2 * decode_tokens)
        non_attention += [{"model": name, "batch": B, "decode_ms": ms[name]} for name in ms]
    payload = {**head, "models": what, "weights": opts.weights, "position_limit": limit, "decode_tokens": decode_tokens,
               "max_prefill_tokens": opts.max_prefill_tokens, "rows": rows, "non_attention": non_attention}
    if opts.peer:
        payload["peer"] = run_peer(opts, contexts, decode_tokens, original.config.get_text_config().vocab_size)
    payload["targets"] = model_targets(payload)
    out = Path(out)
    write_results(out, "results", payload, model_markdown(payload))
    model_plots(payload, out)
    return payload


def run_peer(opts: ModelOptions, contexts: tuple[int, ...], steps: int, vocab: int) -> dict:
    """The peer's section of the results: its rows, or why it was skipped (logged too)."""
    if opts.peer != PEER:
        raise ConfigError(f"unknown peer {opts.peer!r}; the benchmark knows: {PEER}")
    skipped = ("the peer runs the bundled teacher's GGUF, which --tiny-model does not have" if opts.tiny_model
               else peer_unavailable())
    if skipped:
        log(f"peer {PEER}: {skipped}")
        return {"name": PEER, "skipped": skipped}
    import llama_cpp

    gguf = teacher_gguf()
    threads = torch.get_num_threads()
    rows = llama_cpp_rows(gguf, contexts, steps, threads, vocab,
                          on_result=lambda r: log(f"peer {PEER} L={r['context']}: prefill {r['prefill_s']:.2f} s, "
                                                  f"decode {r['decode_ms']:.1f} ms/step"))
    return {"name": PEER, "gguf": str(gguf), "version": llama_cpp.__version__, "threads": threads, "rows": rows}


def _get(rows: list[dict], model: str, context: int, batch: int, key: str):
    for r in rows:
        if r["model"] == model and r["context"] == context and r["batch"] == batch:
            return r.get(key)
    return None


def _ratio(a, b):
    return a / b if a is not None and b else None


def model_targets(p: dict) -> list[dict]:
    """The issue's model targets as rows of (target, measured ratio, met)."""
    rows = p["rows"]

    def ratio(key: str, a: tuple[str, int, int], b: tuple[str, int, int]):
        return _ratio(_get(rows, *a, key), _get(rows, *b, key))

    lin_b1 = [r for r in rows if r["model"] == "linearized" and r["batch"] == 1]
    sizes = {r["cache_bytes"] for r in lin_b1}
    t = [
        target_row("linearized decode ms/token at 16,384 context <= 1.2x its ms at 512 (batch 1)",
                   ratio("decode_ms", ("linearized", 16384, 1), ("linearized", 512, 1)), 1.2, higher_is_better=False),
        target_row("linearized cache bytes equal at every context (batch 1): largest / smallest",
                   (max(sizes) / min(sizes)) if len(lin_b1) > 1 else None, 1.0, higher_is_better=False,
                   note=f"{len(lin_b1)} contexts" if len(lin_b1) > 1 else ""),
    ]
    for L, B, need in ((8192, 1, 3.0), (16384, 1, 4.0), (8192, 8, 3.0)):
        t.append(target_row(f"decode >= {need:g}x faster than the original at {L:,} context, batch {B}",
                            ratio("decode_ms", ("original", L, B), ("linearized", L, B)), need))
    for L in sorted({r["context"] for r in rows if r["context"] >= 4096}):
        t.append(target_row(f"prefill faster than the original at {L:,} tokens (batch 1): original / linearized",
                            ratio("prefill_s", ("original", L, 1), ("linearized", L, 1)), 1.0))
    peer = p.get("peer") or {}
    for r in peer.get("rows", []):
        need, what = (1.0, "faster than") if r["context"] >= 8192 else (0.5, "within 2x of")
        t.append(target_row(f"decode {what} {PEER} running the teacher's GGUF at {r['context']:,} context (batch 1): "
                            f"{PEER} / linearized", _ratio(r["decode_ms"], _get(rows, "linearized", r["context"], 1,
                                                                                 "decode_ms")), need))
    na = {(r["model"], r["batch"]): r["decode_ms"] for r in p["non_attention"]}
    for B in sorted({r["batch"] for r in p["non_attention"]}):
        t.append(target_row(f"non-attention part of the decode step no slower than the original's (batch {B}): "
                            "linearized / original", _ratio(na.get(("linearized", B)), na.get(("original", B))),
                            1.05, higher_is_better=False, note="threshold 1.05: 5% timing noise allowed"))
    return t


def model_markdown(p: dict) -> str:
    rows = [dict(r, cache_mib=r["cache_bytes"] / 2**20, peak_extra_mib=r["peak_extra_bytes"] / 2**20,
                 peak_rss_mib=r["peak_rss_bytes"] / 2**20) for r in p["rows"]]
    beyond = any(r["beyond_position_limit"] for r in rows)
    md = [f"# Linearized vs. original: prefill, decode, memory\n\n{header_markdown(p)}",
          f"Models: {p['models']}. No gradient. Decode: median of {p['decode_tokens']} single-token steps "
          f"(ms per step for the whole batch). Cache from a real prefill when batch x context <= "
          f"{p['max_prefill_tokens']:,} tokens, else synthetic (random contents of the right shapes; see "
          "liger.bench.model). Memory: peak RSS of the process during the measurement, the part above its start "
          "(peak extra), and the exact bytes of the cache after the last step.",
          (f"The original's max_position_embeddings is {p['position_limit']:,}; rows beyond it ran with RoPE "
           "extrapolation (speed only)." if beyond else ""), "", "## Targets\n", targets_markdown(p["targets"]), "",
          "## Rows\n",
          markdown_table(rows, ["model", "context", "batch", "cache_source", "prefill_s", "prefill_tokens_per_s",
                                "decode_ms", "cache_mib", "peak_extra_mib", "peak_rss_mib"],
                         ["model", "context", "batch", "cache", "prefill s", "prefill tokens/s", "decode ms/step",
                          "cache MiB", "peak extra MiB", "peak RSS MiB"]), "",
          "## Decode step without attention (attention modules stubbed to zeros)\n",
          markdown_table(p["non_attention"], ["model", "batch", "decode_ms"], ["model", "batch", "ms/step"]), "",
          peer_markdown(p.get("peer"))]
    return "\n".join(md)


def model_plots(p: dict, out: Path) -> list[Path]:
    rows = p["rows"]
    files = []
    for key, fname, title, ylabel, scale in (
        ("decode_ms", "model_decode.png", "decode latency", "ms per step", 1.0),
        ("prefill_s", "model_prefill.png", "prefill latency", "s", 1.0),
        ("cache_bytes", "model_cache.png", "cache size after decoding", "MiB", 2**-20),
        ("peak_extra_bytes", "model_peak_memory.png", "peak memory above the loaded models", "MiB", 2**-20),
    ):
        series = {}
        for model in ("original", "linearized"):
            for B in sorted({r["batch"] for r in rows}):
                sel = [r for r in rows if r["model"] == model and r["batch"] == B]
                if sel and any(r.get(key) is not None for r in sel):
                    series[f"{model}, batch {B}"] = ([r["context"] for r in sel],
                                                     [None if r.get(key) is None else r[key] * scale for r in sel])
        peer_rows = (p.get("peer") or {}).get("rows", [])
        if peer_rows and key in ("decode_ms", "prefill_s"):
            series[f"{PEER} (teacher GGUF), batch 1"] = ([r["context"] for r in peer_rows], [r[key] for r in peer_rows])
        files.append(line_plot(out / fname, series, title, "context (tokens)", ylabel))
    na = p["non_attention"]
    batches = sorted({r["batch"] for r in na})
    files.append(bar_plot(out / "model_non_attention.png", [f"batch {b}" for b in batches],
                          {m: [next((r["decode_ms"] for r in na if r["model"] == m and r["batch"] == b), None)
                               for b in batches] for m in ("original", "linearized")},
                          "decode step with attention stubbed out", "ms per step"))
    return files
