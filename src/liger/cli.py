"""Command line: `liger linearize | convert | eval | generate | info`. Errors a user can cause print one
line, exit code 2."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from .config import MIXERS
from .errors import ConfigError, LigerError

# Modules that add subcommands: each defines `register(subparsers)` (imports inside the command functions
# keep `liger --help` fast).
COMMAND_MODULES: tuple[str, ...] = ("liger.train.command", "liger.evaluate.command", "liger.bench.command")


def _layer_list(text: str) -> tuple[int, ...]:
    """"0,15" -> (0, 15); ranges too: "0-3,8" -> (0, 1, 2, 3, 8)."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ConfigError(
            f"--softmax-layers takes comma-separated layer indices or ranges such as 0,15 or 0-3, or auto:N; "
            f"got {text!r}"
        ) from None
    return tuple(out)


def add_liger_config_args(p: argparse.ArgumentParser) -> None:
    """The LigerConfig flags shared by `convert` and `linearize`."""
    p.add_argument("--mixer", default="gla", choices=list(MIXERS),
                   help="linear mixer (default: gla; see README's mixer table)")
    p.add_argument("--window", type=int, default=64, help="sliding-window length in tokens; 0 = no window branch")
    p.add_argument(
        "--softmax-layers", default="", metavar="I,J",
        help="layers kept as softmax attention, e.g. 0,15 or 0-3,8; or auto:N, the N layers whose linearization "
        "costs most (attention-transfer error on a few batches; scores saved in layer_scores.json / the report)"
    )
    p.add_argument("--softmax-every", type=int, default=0, metavar="N",
                   help="also keep one layer in every N as softmax (N=4: 3:1 linear to softmax)")
    p.add_argument("--learnable-mix", action="store_true", help="train the window/linear weights per head")
    p.add_argument("--num-slots", type=int, default=64, metavar="M",
                   help="gsa: memory slots per head (default 64, capped at the head dimension)")
    p.add_argument("--negative-eigen", action="store_true",
                   help="gated_deltanet: beta in [0, 2] (negative eigenvalues) instead of [0, 1]")


def liger_config_from_args(args: argparse.Namespace):
    from .config import LigerConfig
    from .layer_scores import parse_auto

    auto = parse_auto(args.softmax_layers)  # auto:N is resolved on data, before surgery (softmax_auto_count)
    return LigerConfig(mixer=args.mixer, window=args.window,
                       softmax_layers=() if auto else _layer_list(args.softmax_layers),
                       softmax_every=args.softmax_every, learnable_mix=args.learnable_mix,
                       num_slots=args.num_slots, delta_negative_eigen=args.negative_eigen)


def softmax_auto_count(args: argparse.Namespace) -> int:
    """N of `--softmax-layers auto:N`, 0 when the flag lists layers."""
    from .layer_scores import parse_auto

    return parse_auto(args.softmax_layers) or 0


def cmd_convert(args: argparse.Namespace) -> None:
    from .checkpoint import atomic_output_dir
    from .models import load_model
    from .surgery import linearize

    config = liger_config_from_args(args)
    n_auto = softmax_auto_count(args)
    model, tok = load_model(args.model, dtype="auto")
    scores = None
    if n_auto:
        from .layer_scores import batches_of, builtin_blocks, choose_softmax_layers, scores_markdown

        config, scores = choose_softmax_layers(model, batches_of(builtin_blocks(tok)), config, n_auto)
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
    import torch
    from transformers import TextStreamer

    from .models import load_model

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


def cmd_info(args: argparse.Namespace) -> None:
    from .cache import cache_footprint
    from .checkpoint import from_pretrained
    from .surgery import decoder_layers

    model = from_pretrained(args.model)
    kinds = []
    for i, layer in enumerate(decoder_layers(model)):
        c = getattr(layer.self_attn, "liger", None)
        kinds.append("softmax" if c is None else (f"{c.mixer}+window{c.window}" if c.window else c.mixer))
    fp = cache_footprint(model)
    info = {
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
    if args.json:
        print(json.dumps(info, indent=2))
        return
    runs: list[str] = []
    for i, k in enumerate(kinds):
        if runs and runs[-1].split(" ")[-1] == k:
            first = runs[-1].split(" ")[0].split("-")[0]
            runs[-1] = f"{first}-{i} {k}"
        else:
            runs.append(f"{i} {k}")
    mib = 2**20
    ctx = fp["fixed"] / fp["original_per_token"] if fp["original_per_token"] else 0
    print(f"model type     {info['model_type']}, {info['layers']} layers, {info['dtype']}")
    print(f"layers         {'; '.join(runs)}")
    print(f"parameters     {info['parameters']:,}")
    print(f"cache          {fp['fixed'] / mib:.2f} MiB per sequence, fixed"
          + (f", plus {fp['per_token']:,} bytes per token (softmax layers)" if fp["per_token"] else ""))
    print(f"original cache {fp['original_per_token']:,} bytes per token "
          f"(the linearized cache equals the original's at {ctx:,.0f} tokens of context)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liger", description="Linearize pretrained Transformer LLMs into gated linear-recurrent models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LigerError as e:
        print(f"liger {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"liger {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
