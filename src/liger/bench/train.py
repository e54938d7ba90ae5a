"""Training benchmark: tokens/s of one LoRA training step of the linearized bundled teacher and of the
original, at 512, 1,024 and 4,096 tokens, with bf16 autocast and in float32.

A step is what `liger linearize --recipe liger` runs per optimizer step (liger.train): peft LoRA r=8
(alpha 16) on q/k/v (`ArchSpec.lora_targets("qkv")`), forward with labels (next-token cross-entropy over
the model's vocabulary), backward, gradient clipping at 1.0, AdamW (lr 1e-3, betas 0.9/0.95) step and
zero_grad. One sequence of T random token ids (batch 1); tokens/s = T / median step time after one
warm-up step. Both models get the same adapters, so they train the same number of parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..arch import ARCHITECTURES, model_type
from ..errors import ConfigError
from ..runinfo import header
from ..train.loop import ADAM_BETAS, TrainConfig
from ..train.recipes import add_lora
from .common import (bar_plot, header_markdown, load_pair, log, markdown_table, target_row, targets_markdown, timeit,
                     write_results)

FULL_LENGTHS = (512, 1024, 4096)
QUICK_LENGTHS = (512, 1024)
PRECISIONS = ("bf16", "fp32")
QUICK_PRECISIONS = ("bf16",)
FULL_REPEATS = 3
QUICK_REPEATS = 2


def with_lora(model: nn.Module, r: int = 8) -> nn.Module:
    """`model` wrapped with peft LoRA r on q/k/v as the liger recipe does (liger.train.recipes.add_lora)."""
    return add_lora(model, ARCHITECTURES[model_type(model)].lora_targets("qkv"), r=r, alpha=2 * r)


def train_step_time(model: nn.Module, length: int, precision: str, repeats: int = 3, batch: int = 1,
                    seed: int = 0) -> float:
    """Median seconds of one LoRA training step (see the module docstring) on [batch, length] token ids."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; wrap it with `with_lora` first")
    opt = torch.optim.AdamW(params, lr=TrainConfig.lr, betas=ADAM_BETAS)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, TrainConfig.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        return timeit(step, repeats=repeats, warmup=1, budget_s=600)
    finally:
        model.eval()


@dataclass
class TrainBenchOptions:
    """What `run` measures (the flags of `liger bench train`); a size left None is the full default, or with
    `quick` the quick one."""

    train_lengths: tuple[int, ...] | None = None  # FULL_LENGTHS / QUICK_LENGTHS
    precisions: tuple[str, ...] | None = None  # PRECISIONS / QUICK_PRECISIONS
    train_repeats: int | None = None  # timed steps, median: FULL_REPEATS / QUICK_REPEATS
    lora_r: int = 8
    quick: bool = False
    tiny_model: bool = False  # a tiny random Llama instead of the bundled teacher (tests)


def run(opts: TrainBenchOptions, out: str | Path, command: str | None = None) -> dict:
    """Run the training benchmark; write results.json / .md / PNG to `out`."""
    lengths = opts.train_lengths or (QUICK_LENGTHS if opts.quick else FULL_LENGTHS)
    precisions = opts.precisions or (QUICK_PRECISIONS if opts.quick else PRECISIONS)
    if set(precisions) - set(PRECISIONS):
        raise ConfigError(f"--precisions takes bf16 and/or fp32, comma-separated; got {','.join(precisions)!r}")
    repeats = opts.train_repeats
    if repeats is None:
        repeats = QUICK_REPEATS if opts.quick else FULL_REPEATS
    if repeats < 1 or opts.lora_r < 1:
        raise ConfigError("--train-repeats and --lora-r must be >= 1")
    head = header(command)
    original, linearized, what = load_pair(opts.tiny_model)
    rows = []
    models = {"original": with_lora(original, opts.lora_r), "linearized": with_lora(linearized, opts.lora_r)}
    for precision in precisions:
        for T in lengths:
            for name, model in models.items():  # back to back: their ratio sees the same machine state
                s = train_step_time(model, T, precision, repeats)
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                rows.append({"model": name, "precision": precision, "tokens": T, "step_s": s,
                             "tokens_per_s": T / s, "trainable_parameters": trainable})
                log(f"train {name} {precision} T={T}: {T / s:.0f} tokens/s")
    payload = {**head, "models": what, "lora_r": opts.lora_r, "rows": rows}
    payload["targets"] = train_targets(rows)
    out = Path(out)
    write_results(out, "results", payload, train_markdown(payload))
    train_plots(payload, out)
    return payload


def _rate(rows: list[dict], model: str, precision: str, T: int) -> float | None:
    return next((r["tokens_per_s"] for r in rows if (r["model"], r["precision"], r["tokens"]) == (model, precision, T)),
                None)


def train_targets(rows: list[dict]) -> list[dict]:
    out = []
    for precision in sorted({r["precision"] for r in rows}):
        lin, orig = _rate(rows, "linearized", precision, 1024), _rate(rows, "original", precision, 1024)
        out.append(target_row(f"training tokens/s of the linearized model >= 0.8x the original's at 1,024 tokens "
                              f"({precision})", lin / orig if lin and orig else None, 0.8))
    return out


def train_markdown(p: dict) -> str:
    rows = []
    for r in p["rows"]:
        if r["model"] != "linearized":
            continue
        orig = _rate(p["rows"], "original", r["precision"], r["tokens"])
        rows.append({"precision": r["precision"], "tokens": r["tokens"], "original": orig,
                     "linearized": r["tokens_per_s"], "ratio": r["tokens_per_s"] / orig if orig else None})
    n = p["rows"][0]["trainable_parameters"] if p["rows"] else 0
    md = [f"# LoRA training step: tokens/s\n\n{header_markdown(p)}",
          f"Models: {p['models']}. One sequence per step; LoRA r={p['lora_r']} on q/k/v ({n:,} trainable "
          "parameters), cross-entropy, backward, clipping, AdamW step (see liger.bench.train). Median of the "
          "timed steps after one warm-up step.\n", "## Targets\n", targets_markdown(p["targets"]), "",
          "## Tokens/s\n",
          markdown_table(rows, ["precision", "tokens", "original", "linearized", "ratio"],
                         ["precision", "tokens per step", "original tokens/s", "linearized tokens/s",
                          "linearized / original"]), ""]
    return "\n".join(md)


def train_plots(p: dict, out: Path) -> list[Path]:
    rows = p["rows"]
    lengths = sorted({r["tokens"] for r in rows})
    bars = {}
    for model in ("original", "linearized"):
        for precision in sorted({r["precision"] for r in rows}):
            bars[f"{model} {precision}"] = [_rate(rows, model, precision, T) for T in lengths]
    return [bar_plot(out / "train_tokens_per_s.png", [f"{T:,} tokens" for T in lengths], bars,
                     "LoRA training step throughput", "tokens/s")]
