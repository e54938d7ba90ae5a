"""`liger convert | generate | info`: one model at a time, no training."""

from __future__ import annotations

import argparse
import json

import torch
from transformers import TextStreamer

from ..arch import decoder_layers
from ..atomic import atomic_output_dir
from ..cache import cache_footprint
from ..checkpoint import from_pretrained
from ..errors import ConfigError
from ..layer_scores import builtin_blocks, resolve_auto, scores_markdown
from ..models import load_model
from ..surgery import linearize
from .flags import add_liger_config_args, liger_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="linearize a model (no training) and save it",
                       description="Swap every softmax attention for Liger Attention, reusing the weights, and save.")
    p.add_argument("--model", required=True, help="model folder, hub id, or 'bundled' (SmolLM2-135M-Instruct)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    add_liger_config_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("generate", help="generate text, streaming tokens as they come",
                       description="Generate from a liger checkpoint with its constant-memory cache.")
    p.add_argument("--model", required=True, help="liger checkpoint folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    p.add_argument("--any-model", action="store_true", help="also accept a plain (softmax) model, to compare")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="layer kinds, parameters, cache bytes vs. the original KV cache",
                       description="Describe a liger checkpoint.")
    p.add_argument("model", metavar="DIR", help="liger checkpoint folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def cmd_convert(args: argparse.Namespace) -> None:
    config, n_auto = liger_config_from_args(args)
    model, tok = load_model(args.model, dtype="auto")
    scores = None
    if n_auto:  # scored on the built-in corpus (convert has no --data)
        config, scores = resolve_auto(model, config, n_auto, builtin_blocks(tok))
        print(scores_markdown(scores))
    linearize(model, config)
    with atomic_output_dir(args.out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if scores is not None:
            (tmp / "layer_scores.json").write_text(json.dumps(scores, indent=2))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {type(model).__name__}, {n:,} parameters, {config}")


def cmd_generate(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be >= 1")
    model, tok = load_model(args.model, require_liger=not args.any_model)
    if tok.chat_template and not args.raw:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False, add_generation_prompt=True)
    else:
        text = args.prompt
    enc = tok(text, return_tensors="pt", add_special_tokens=not tok.chat_template or args.raw)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    sampling = args.temperature > 0
    torch.manual_seed(args.seed)
    with torch.no_grad():
        model.generate(
            **enc,
            max_new_tokens=args.max_new_tokens,
            do_sample=sampling,
            temperature=args.temperature if sampling else None,
            top_p=args.top_p if sampling else None,
            top_k=None,
            streamer=streamer,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )


def checkpoint_info(model: torch.nn.Module) -> dict:
    """What `liger info` prints: model type, layer kinds, parameters, dtype, the liger config, cache bytes."""
    kinds = []
    for layer in decoder_layers(model):
        c = getattr(layer.self_attn, "liger", None)
        kinds.append("softmax" if c is None else (f"{c.mixer}+window{c.window}" if c.window else c.mixer))
    fp = cache_footprint(model)
    return {
        "model_type": model.config.model_type,
        "layers": len(kinds),
        "layer_kinds": kinds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "liger": model.config.liger,
        "state_bytes_per_sequence": fp["fixed"],
        "kv_bytes_per_token": fp["per_token"],
        "original_kv_bytes_per_token": fp["original_per_token"],
    }


def cmd_info(args: argparse.Namespace) -> None:
    info = checkpoint_info(from_pretrained(args.model))
    if args.json:
        print(json.dumps(info, indent=2))
        return
    runs: list[str] = []
    for i, k in enumerate(info["layer_kinds"]):
        if runs and runs[-1].split(" ")[-1] == k:
            first = runs[-1].split(" ")[0].split("-")[0]
            runs[-1] = f"{first}-{i} {k}"
        else:
            runs.append(f"{i} {k}")
    mib = 2**20
    fixed, per_token, original = (info["state_bytes_per_sequence"], info["kv_bytes_per_token"],
                                  info["original_kv_bytes_per_token"])
    ctx = fixed / original if original else 0
    print(f"model type     {info['model_type']}, {info['layers']} layers, {info['dtype']}")
    print(f"layers         {'; '.join(runs)}")
    print(f"parameters     {info['parameters']:,}")
    print(f"cache          {fixed / mib:.2f} MiB per sequence, fixed"
          + (f", plus {per_token:,} bytes per token (softmax layers)" if per_token else ""))
    print(f"original cache {original:,} bytes per token "
          f"(the linearized cache equals the original's at {ctx:,.0f} tokens of context)")
