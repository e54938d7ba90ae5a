"""Perplexity by position bucket on one long stretch of text: the bundled teacher against linearized models, to
see whether quality holds past the training length (0-64, 64-512, 512-1K, 1K-2K, 2K-4K, ..., 16K-32K).

    python bench/position_ppl.py [--text ood|builtin] [--tokens 4096] [--branch-norms] [MODEL ...]

MODEL is a liger checkpoint folder, or `convert:KEY=VALUE,...` for the teacher converted on the spot with those
LigerConfig fields (e.g. `convert:` for the default, `convert:normalize=true`, `convert:mixer=hgrn2`). The text
(one sequence, batch 1, its first --tokens tokens):

- `--text ood` (default): the out-of-domain GNU licence texts of liger.data.ood, never trained on, all eight
  in a row with EOS between them (`ood_long_document`; 37,564 tokens with SmolLM2, so --tokens up to 32768
  and more); its first 9,276 tokens are the long document of `liger eval` and the linearize report;
- `--text builtin`: the built-in corpus's held-out documents joined by blank lines (about 30K tokens; the text
  of docs/RESULTS.md's "Length" figures, made before `--text` existed).

A text shorter than --tokens stops the bench with a message (no silent shortening). Prints a markdown table of
per-bucket perplexity (exp of the mean next-token loss of the tokens whose position is in the bucket). The
teacher runs on at most its max_position_embeddings tokens (8,192 for SmolLM2): its cells past that are left
empty, the linearized models run on the whole text. The logits are made 1,024 positions at a time from the
final hidden states (never [T, V] at once: 6.4 GB at 32K tokens).
--branch-norms adds, for models with gla-family layers, the mean norm per head of the linear branch's output
and of the values in each bucket, averaged over those layers.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import liger
from liger.data import load_corpus
from liger.data.ood import ood_long_document
from liger.mixers.gla import GLACore
from liger.teacher import teacher_path


def buckets(tokens: int) -> list[tuple[int, int]]:
    """[0, 64), [64, 512), then doubling up to `tokens`."""
    edges = [0, 64, 512]
    while edges[-1] < tokens:
        edges.append(edges[-1] * 2)
    edges = [e for e in edges if e < tokens] + [tokens]
    return list(zip(edges[:-1], edges[1:]))


def losses(model: torch.nn.Module, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Next-token losses [T - 1] of one sequence ids [1, T]; loss i is of the token at position i + 1. The
    decoder runs once; the output head (and Gemma's final soft-capping) `chunk` positions at a time."""
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[0]
        head = model.get_output_embeddings()
        cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        out = []
        for s in range(0, ids.shape[1] - 1, chunk):
            e = min(s + chunk, ids.shape[1] - 1)
            logits = head(hidden[s:e]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            out.append(F.cross_entropy(logits, ids[0, s + 1 : e + 1], reduction="none"))
        return torch.cat(out)


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


def text_ids(tok, text: str, tokens: int) -> torch.Tensor:
    """The first `tokens` tokens [1, tokens] of the chosen text; SystemExit with a message if it is shorter."""
    if text == "ood":
        ids = ood_long_document(tok, tokens)
        what = "the out-of-domain texts (liger.data.ood, GNU licences, EOS between documents)"
    else:
        ids = tok("\n\n".join(load_corpus("builtin").heldout), return_tensors="pt").input_ids[:, :tokens]
        what = "the built-in corpus's held-out documents"
    if ids.shape[1] < tokens:
        sys.exit(f"position_ppl: --tokens {tokens} asks for more than {what} hold ({ids.shape[1]:,} tokens with "
                 f"this tokenizer); use --tokens {ids.shape[1]} or less" + (" or --text ood" if text != "ood" else ""))
    print(f"{tokens:,} tokens of {what}; perplexity by the position of the predicted token.\n")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["convert:"])
    ap.add_argument("--text", choices=("ood", "builtin"), default="ood",
                    help="ood (default): the GNU licence texts of liger.data.ood; builtin: the built-in held-out text")
    ap.add_argument("--tokens", type=int, default=4096, help="length of the sequence (e.g. 32768 with --text ood)")
    ap.add_argument("--branch-norms", action="store_true", help="also the linear branch's output norms")
    args = ap.parse_args()
    if args.tokens < 2:
        ap.error("--tokens must be at least 2")
    tok = AutoTokenizer.from_pretrained(teacher_path())
    ids = text_ids(tok, args.text, args.tokens)
    spans = buckets(ids.shape[1])
    print("| model | " + " | ".join(f"{a}-{b}" for a, b in spans) + " |")
    print("|---|" + "---:|" * len(spans))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path(), dtype=torch.float32).eval()
    norms = []
    for name, model in [("teacher", teacher)] + [(spec, None) for spec in args.models]:
        model = model if model is not None else load(name)
        # the teacher only up to its context limit; its cells past it stay empty
        limit = model.config.get_text_config().max_position_embeddings if model is teacher else ids.shape[1]
        nll = losses(model, ids[:, :limit])
        cells = [f"{nll[max(a - 1, 0) : b - 1].mean().exp().item():,.1f}" if b <= limit else "" for a, b in spans]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        if args.branch_norms and (found := branch_norms(model, ids[:, :limit])) is not None:
            norms.append((name, found))
    for name, (out, val) in norms:
        print(f"\n{name}: mean norm of the linear branch's output / of the values, per bucket")
        print(" | ".join(f"{a}-{b}: {out[a:b].mean():.1f} / {val[a:b].mean():.1f}" for a, b in spans))


if __name__ == "__main__":
    main()
