"""Perplexity by position bucket on one long stretch of held-out text: the bundled teacher against linearized
models, to see whether quality holds past the training length (0-64, 64-512, 512-1K, 1K-2K, 2K-4K, ...).

    python bench/position_ppl.py [--tokens 4096] [--branch-norms] [MODEL ...]

MODEL is a liger checkpoint folder, or `convert:KEY=VALUE,...` for the teacher converted on the spot with those
LigerConfig fields (e.g. `convert:` for the default, `convert:normalize=true`, `convert:mixer=hgrn2`). The text
is the built-in corpus's held-out documents joined, its first --tokens tokens (one sequence, batch 1). Prints a
markdown table of per-bucket perplexity (exp of the mean next-token loss of the targets in the bucket).
--branch-norms adds, for models with gla-family layers, the mean norm per head of the linear branch's output
and of the values in each bucket, averaged over those layers.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import liger
from liger.data import load_corpus
from liger.mixers.gla import GLACore
from liger.teacher import teacher_path


def buckets(tokens: int) -> list[tuple[int, int]]:
    """[0, 64), [64, 512), then doubling up to `tokens`."""
    edges = [0, 64, 512]
    while edges[-1] < tokens:
        edges.append(edges[-1] * 2)
    edges = [e for e in edges if e < tokens] + [tokens]
    return list(zip(edges[:-1], edges[1:]))


def losses(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token losses [T - 1] of one sequence ids [1, T]; loss i is of the token at position i + 1."""
    with torch.no_grad():
        return F.cross_entropy(model(ids).logits[0, :-1].float(), ids[0, 1:], reduction="none")


def branch_norms(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Mean per-head norms [T] of the gla-family linear branch's output and of the values, over the layers."""
    outs, values = [], []
    linear = GLACore.linear

    def recording(core, q, k, v, *args):
        o, state = linear(core, q, k, v, *args)
        outs.append(o.float().norm(dim=-1).mean(dim=(0, 2)))
        values.append(v.float().norm(dim=-1).mean(dim=(0, 2)))
        return o, state

    GLACore.linear = recording
    try:
        losses(model, ids)
    finally:
        GLACore.linear = linear
    return (torch.stack(outs).mean(0), torch.stack(values).mean(0)) if outs else None


def load(spec: str) -> torch.nn.Module:
    if spec.startswith("convert:"):
        fields = {k: json.loads(v) if v[:1] in "0123456789[-tf" else v
                  for k, v in (kv.split("=", 1) for kv in spec[len("convert:"):].split(",") if kv)}
        teacher = AutoModelForCausalLM.from_pretrained(teacher_path(), dtype=torch.float32)
        return liger.linearize(teacher, liger.LigerConfig(**fields)).eval()
    return liger.from_pretrained(spec, dtype=torch.float32).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["convert:"])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--branch-norms", action="store_true", help="also the linear branch's output norms")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(teacher_path())
    ids = tok("\n\n".join(load_corpus("builtin").heldout), return_tensors="pt").input_ids[:, : args.tokens]
    spans = buckets(ids.shape[1])
    print("| model | " + " | ".join(f"{a}-{b}" for a, b in spans) + " |")
    print("|---|" + "---:|" * len(spans))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path(), dtype=torch.float32).eval()
    norms = []
    for name, model in [("teacher", teacher)] + [(spec, None) for spec in args.models]:
        model = model if model is not None else load(name)
        nll = losses(model, ids)
        cells = [f"{nll[max(a - 1, 0) : b - 1].mean().exp().item():,.1f}" for a, b in spans]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        if args.branch_norms and (found := branch_norms(model, ids)) is not None:
            norms.append((name, found))
    for name, (out, val) in norms:
        print(f"\n{name}: mean norm of the linear branch's output / of the values, per bucket")
        print(" | ".join(f"{a}-{b}: {out[a:b].mean():.1f} / {val[a:b].mean():.1f}" for a, b in spans))


if __name__ == "__main__":
    main()
