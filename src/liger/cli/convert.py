"""`liger convert | generate | info | export`: one model at a time, no training."""

from __future__ import annotations

import argparse
import json

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TextStreamer

from ..arch import decoder_layers
from ..atomic import atomic_output_dir, check_writable
from ..cache import cache_footprint
from ..checkpoint import from_pretrained
from ..errors import ConfigError
from ..export import REPORT_FILE, TARGETS, export
from ..memory_estimate import ModelShape, check_fits, forward_bytes, inference_weights
from ..layer_scores import builtin_blocks, resolve_auto, scores_markdown
from ..models import check_logits, load_model, read_config
from ..quantize import quantize_weights
from ..surgery import linearize
from .flags import (COUNT, PROBABILITY, SEED, Bounds, add_fused_decode_flag, add_liger_config_args,
                    add_weights_flag, apply_fused_decode, check_against_model,
                    liger_config_from_args, number)


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
    number(p, "--max-new-tokens", bounds=COUNT, default=64)
    number(p, "--temperature", type=float, bounds=Bounds(0, note="(0 = greedy)"), default=0.0,
           help="0 = greedy (default)")
    number(p, "--top-p", type=float, bounds=PROBABILITY, default=0.95,
           help="sampling: the smallest set of tokens whose probabilities add up to P (default 0.95)")
    number(p, "--seed", bounds=SEED, default=0)
    p.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    p.add_argument("--any-model", action="store_true", help="also accept a plain (softmax) model, to compare")
    add_weights_flag(p, "the model")
    add_fused_decode_flag(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="layer kinds, parameters, cache bytes vs. the original KV cache",
                       description="Describe a liger checkpoint.")
    p.add_argument("model", metavar="DIR", help="liger checkpoint folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="write a linearized model as a native transformers architecture",
                       description="Write a liger checkpoint in a hybrid architecture that transformers ships "
                       "(qwen3_5: Qwen3_5ForCausalLM), which plain transformers, llama.cpp and vLLM load without "
                       "liger. Linear layers must use --mixer native_gdn. Checks the logits against liger's.")
    p.add_argument("model", metavar="DIR", help="liger checkpoint folder")
    p.add_argument("--to", required=True, choices=list(TARGETS), help="the native architecture")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    number(p, "--check-tokens", bounds=COUNT, default=256,
           help="built-in corpus tokens on which to compare the exported logits with liger's (and calibrate "
           "q/k norms the host lacks; default %(default)s)")
    p.set_defaults(func=cmd_export)


def cmd_convert(args: argparse.Namespace) -> None:
    config, n_auto = liger_config_from_args(args)
    check_writable(args.out)
    model_config = read_config(args.model)
    if model_config is not None:
        check_against_model(config, model_config)
    model, tok = load_model(args.model, dtype="auto")
    check_against_model(config, model.config)  # a hub model whose config was not in the local cache
    scores = None
    if n_auto:  # scored on the built-in corpus (convert has no --data): held-out blocks, training ones for transfer
        blocks = builtin_blocks(tok, heldout=args.softmax_select != "transfer")
        config, scores = resolve_auto(model, config, n_auto, blocks, select=args.softmax_select, tokenizer=tok,
                                      progress=True)
        print(scores_markdown(scores))
    linearize(model, config)
    with atomic_output_dir(args.out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if scores is not None:
            (tmp / "layer_scores.json").write_text(json.dumps(scores, indent=2))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {type(model).__name__}, {n:,} parameters, {config}")


class _CheckFirstLogits(LogitsProcessor):
    """Generation's first step: CheckpointError if the logits of the prompt are NaN or +inf (a model that would
    otherwise print nothing, or newlines, and exit 0)."""

    def __init__(self, spec: str) -> None:
        self.spec, self.checked = spec, False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.checked:
            check_logits(scores, self.spec)
            self.checked = True
        return scores


def _check_generate_memory(args: argparse.Namespace) -> None:
    """Refuse a generation whose weights and cache cannot fit: the softmax layers (all of a plain model's)
    keep every token's keys and values, so a huge --max-new-tokens grows their cache without bound."""
    config = read_config(args.model)
    if config is None:
        return
    shape = ModelShape(config)
    prompt = len(args.prompt.encode()) + 64  # at most one token per byte, plus a chat template
    cache = (prompt + args.max_new_tokens) * shape.kv_bytes_per_token * shape.softmax_layers * shape.param_bytes / 4
    parts = {"weights": inference_weights(shape, shape.param_bytes), **forward_bytes(shape, prompt), "cache": cache}
    check_fits(parts, f"generating --max-new-tokens {args.max_new_tokens:,} with {args.model}",
               f"lower --max-new-tokens (the {shape.softmax_layers} softmax layers keep every token's keys and "
               "values) or shorten --prompt")


def cmd_generate(args: argparse.Namespace) -> None:
    if not args.prompt:
        raise ConfigError('--prompt is empty; give the text to continue, e.g. --prompt "The capital of France is"')
    _check_generate_memory(args)
    model, tok = load_model(args.model, require_liger=not args.any_model, finite=True)
    model = quantize_weights(model, args.weights)
    apply_fused_decode(args.fused_decode)
    if tok.chat_template and not args.raw:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False, add_generation_prompt=True)
    else:
        text = args.prompt
    enc = tok(text, return_tensors="pt", add_special_tokens=not tok.chat_template or args.raw)
    if enc.input_ids.shape[1] == 0:
        raise ConfigError(f"--prompt {args.prompt!r} encodes to no tokens; give some text to continue")
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
            logits_processor=LogitsProcessorList([_CheckFirstLogits(args.model)]),
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


def cmd_export(args: argparse.Namespace) -> None:
    check_writable(args.out)
    model, tok = load_model(args.model, require_liger=True)
    ids = builtin_blocks(tok, n=1, seq_len=args.check_tokens, heldout=True)
    r = export(model, args.to, args.out, tokenizer=tok, check_ids=ids)
    kinds = ", ".join(f"{r.layer_types.count(k)} {k}" for k in dict.fromkeys(r.layer_types))
    print(f"wrote {args.out}: {r.model_type} ({kinds}); load it with transformers' AutoModelForCausalLM")
    print(f"largest |logit difference| to the liger model on {r.check_tokens} tokens: {r.max_abs_logit_diff:.3g} "
          f"({'exact up to float rounding' if r.exact else 'not exact'}; {REPORT_FILE})")
    for note in r.notes:
        print(f"  note: {note}")
