"""Timing, report and plot helpers shared by the benchmarks.

Every benchmark writes to one folder: `results.json` (the run's header, `liger.runinfo.header`: date,
machine, command; the measured rows, the targets), `results.md` (the same as markdown tables) and PNG plots.
Files are written to a temporary name and renamed, so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import transformers

from ..ops import fused_decode
from ..plotting import pyplot, save_figure
from ..quantize import check_format, quantize_weights
from ..surgery import linearize
from ..teacher import load_teacher


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, budget_s: float = 60.0) -> float:
    """Median wall time of `fn` in seconds (stops early once `budget_s` is spent, after at least one run)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    times.sort()
    return times[len(times) // 2]


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def header_markdown(head: dict) -> str:
    return f"{head['date']}, {head['machine']}.\n\nCommand: `{head['command']}`\n"


def fmt(x) -> str:
    """A table cell: 3 significant digits, thousands separators for large numbers, '' for None."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, int) and abs(x) >= 10000:
        return f"{x:,}"
    return str(x)


def markdown_table(rows: list[dict], columns: list[str], headers: Sequence[str] | None = None) -> str:
    """Rows (dicts) as a markdown table of `columns` (missing values blank); `headers` renames the columns."""
    names = list(headers) if headers is not None else columns
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def target_row(target: str, ratio: float | None, threshold: float, higher_is_better: bool = True,
               note: str = "") -> dict:
    """One row of a targets summary: {"target", "measured", "met", "note"}. `met` is None (shown blank) when
    the quantity was not measured in this run (ratio None)."""
    if ratio is None:
        return {"target": target, "measured": None, "met": None, "note": note or "not measured in this run"}
    met = ratio >= threshold if higher_is_better else ratio <= threshold
    return {"target": target, "measured": float(ratio), "met": bool(met), "note": note}


def targets_markdown(rows: list[dict]) -> str:
    return markdown_table(rows, ["target", "measured", "met", "note"],
                          ["target", "measured ratio", "met", "note"])


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_results(out: str | Path, name: str, payload: dict, markdown: str) -> Path:
    """Write `name`.json and `name`.md into folder `out` (created if needed), each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / f"{name}.json", (json.dumps(payload, indent=2, default=str) + "\n").encode())
    _write_atomic(out / f"{name}.md", (markdown.rstrip() + "\n").encode())
    return out


def line_plot(path: str | Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
              xlabel: str, ylabel: str, logx: bool = True, logy: bool = True,
              hline: tuple[float, str] | None = None) -> Path:
    """A PNG of named (x, y) series, markers at the measured points only (no interpolation beyond them);
    `hline` = (y, label) draws a dashed reference line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (xs, ys) in series.items():
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if hline is not None:
        ax.axhline(hline[0], linestyle="--", color="grey", label=hline[1])
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def bar_plot(path: str | Path, groups: Sequence[str], bars: dict[str, Sequence[float | None]], title: str,
             ylabel: str) -> Path:
    """A PNG of grouped bars: one group per entry of `groups`, one bar per key of `bars` (None: no bar)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.8 / max(1, len(bars))
    for i, (label, ys) in enumerate(bars.items()):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(groups))]
        ax.bar([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None], width, label=label)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def tiny_causal_lm(seed: int = 0, vocab: int = 256, layers: int = 2, max_positions: int = 4096):
    """A tiny randomly initialised Llama (float32, eval mode; GQA 4/2 heads, head_dim 16) for fast test runs
    of the benchmarks (the hidden --tiny-model flag)."""
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=16, max_position_embeddings=max_positions, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def fused_decode_note(on: bool) -> str:
    """Switch the fused decode step (liger.ops.fused_decode) on or off for this process, as the benchmark's
    --fused-decode says; the note for the models' description ("" when off)."""
    reason = fused_decode.set_enabled(on)
    if not on:
        return ""
    if reason:
        log(f"--fused-decode: {reason}; decoding eagerly")
    return f"; fused decode step: {'unavailable (' + reason + '), eager' if reason else 'on'}"


def load_pair(tiny: bool = False, weights: str = "float32") -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(original, linearized, description): the bundled teacher and a second copy linearized with
    `liger.linearize`'s default LigerConfig, both with `weights` (liger.quantize; float32 by default);
    `tiny`: the same for `tiny_causal_lm`."""
    check_format(weights)
    if tiny:
        original, linearized, what = tiny_causal_lm(), linearize(tiny_causal_lm()), "tiny random Llama (2 layers, hidden 64)"
    else:
        original, linearized = load_teacher()[0], linearize(load_teacher()[0])
        what = "bundled SmolLM2-135M-Instruct, linearized with the default LigerConfig"
    return (quantize_weights(original, weights), quantize_weights(linearized, weights),
            f"{what}; weights {weights} in both")
