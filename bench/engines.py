"""The exported model (`liger export --to qwen3_5`) in other engines, against liger: the same greedy tokens, and
decode speed at a few context lengths. Each engine runs in its own process (and, for vLLM, its own virtual
environment: it pins another transformers), appending one JSON line to --out; `table` prints them.

    python bench/engines.py ids --model CKPT --out ids.json [--prompt TEXT] [--contexts 512,2048]
    python bench/engines.py liger --model CKPT --ids ids.json --out results.jsonl      # liger's own model
    python bench/engines.py hf --model NATIVE --ids ids.json --out results.jsonl       # transformers' Qwen3_5ForCausalLM
    python bench/engines.py llamacpp --gguf NATIVE.gguf --ids ids.json --out results.jsonl [--kv-f32]
    python bench/engines.py vllm --model NATIVE --ids ids.json --out results.jsonl     # greedy tokens only (bf16)
    python bench/engines.py table results.jsonl

`ids` writes the prompt's token ids (the chat template applied, as `liger generate` does, unless --raw) and, per context
length N, the first N tokens of the out-of-domain long document (liger.data.ood): every engine reads the same
ids, so no tokenizer difference enters. Greedy: --tokens new tokens from the prompt, EOS ignored. Decode speed:
prefill the N context tokens, then --steps single-token steps feeding the greedy token; the median step, in
ms, batch 1, --threads threads. The GGUF comes from llama.cpp's own converter (its sources ship in PyPI's
llama-cpp-python sdist; `--no-mtp`: our checkpoints have no multi-token-prediction layers):

    python LLAMA_CPP/convert_hf_to_gguf.py NATIVE --outfile NATIVE.gguf --outtype f32 --no-mtp
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def read_ids(path: str) -> dict:
    return json.loads(Path(path).read_text())


def append(out: str, record: dict) -> None:
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))


def cmd_ids(a: argparse.Namespace) -> None:
    from liger.data.ood import ood_long_document
    from liger.models import load_model

    _, tok = load_model(a.model, require_liger=True)
    if a.raw:
        prompt = tok(a.prompt).input_ids
    else:
        text = tok.apply_chat_template([{"role": "user", "content": a.prompt}], tokenize=False,
                                       add_generation_prompt=True)
        prompt = tok(text, add_special_tokens=False).input_ids
    contexts = [int(n) for n in a.contexts.split(",")]
    doc = ood_long_document(tok, max(contexts))[0].tolist()
    Path(a.out).write_text(json.dumps({"prompt": a.prompt, "prompt_ids": prompt,
                                       "contexts": {str(n): doc[:n] for n in contexts}}))


def torch_run(model, ids: dict, tokens: int, steps: int, threads: int, name: str) -> dict:
    """Greedy tokens and decode timing of a transformers-style model (liger's, or transformers' own class)."""
    import torch

    from liger.cache import CACHE_KWARG, output_cache

    before = torch.get_num_threads()
    torch.set_num_threads(threads)

    @torch.no_grad()
    def run(prefix: list[int], n: int) -> tuple[list[int], list[float]]:
        out = model(torch.tensor([prefix]), use_cache=True)
        cache, gen, times = output_cache(out), [], []
        for _ in range(n):
            t = int(out.logits[0, -1].argmax())
            gen.append(t)
            t0 = time.perf_counter()
            out = model(torch.tensor([[t]]), use_cache=True, **{CACHE_KWARG: cache})
            times.append((time.perf_counter() - t0) * 1e3)
            cache = output_cache(out)
        return gen, times

    try:
        gen, _ = run(ids["prompt_ids"], tokens)
        decode = {n: round(statistics.median(run(ctx, steps)[1]), 2) for n, ctx in ids["contexts"].items()}
    finally:
        torch.set_num_threads(before)
    return {"engine": name, "gen_ids": gen, "decode_ms": decode, "threads": threads}


def cmd_liger(a: argparse.Namespace) -> None:
    import liger

    model = liger.from_pretrained(a.model, dtype="float32").eval()
    append(a.out, {**torch_run(model, read_ids(a.ids), a.tokens, a.steps, a.threads, "liger"), "model": a.model})


def cmd_hf(a: argparse.Namespace) -> None:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype="float32").eval()
    rec = torch_run(model, read_ids(a.ids), a.tokens, a.steps, a.threads, f"transformers {transformers.__version__}")
    append(a.out, {**rec, "model": a.model, "class": type(model).__name__})


def cmd_llamacpp(a: argparse.Namespace) -> None:
    import importlib.util

    import llama_cpp

    # liger's llama.cpp runner, loaded from its file: this venv has llama_cpp and numpy, not liger's dependencies
    spec = importlib.util.spec_from_file_location("liger_peer", Path(__file__).parents[1] / "src/liger/bench/peer.py")
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    ids = read_ids(a.ids)
    n_ctx = max(len(c) for c in ids["contexts"].values()) + a.steps + a.tokens + len(ids["prompt_ids"]) + 16
    runner = peer.LlamaCpp(a.gguf, n_ctx, a.threads, kv_f32=a.kv_f32)
    gen = runner.greedy(ids["prompt_ids"], a.tokens)[0]
    decode_ms = {n: round(statistics.median(runner.greedy(c, a.steps)[1]), 2) for n, c in ids["contexts"].items()}
    append(a.out, {"engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "gen_ids": gen,
                   "decode_ms": decode_ms, "threads": a.threads, "model": a.gguf,
                   "kv_cache": "f32" if a.kv_f32 else "f16"})


def cmd_vllm(a: argparse.Namespace) -> None:
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
    from vllm import LLM, SamplingParams, __version__
    from vllm.inputs import TokensPrompt

    ids = read_ids(a.ids)
    llm = LLM(model=a.model, dtype=a.dtype, max_model_len=1024, enforce_eager=True, max_num_seqs=1)
    params = SamplingParams(temperature=0.0, max_tokens=a.tokens, min_tokens=a.tokens, ignore_eos=True)
    t0 = time.perf_counter()
    out = llm.generate([TokensPrompt(prompt_token_ids=ids["prompt_ids"])], params)[0]
    append(a.out, {"engine": f"vllm {__version__} ({a.dtype})", "gen_ids": list(out.outputs[0].token_ids),
                   "generate_s": round(time.perf_counter() - t0, 2), "model": a.model})


def cmd_table(a: argparse.Namespace) -> None:
    rows = [json.loads(line) for f in a.results for line in Path(f).read_text().splitlines() if line.strip()]
    ref = next((r for r in rows if r["engine"] == "liger"), rows[0])
    contexts = list(ref.get("decode_ms", {}))
    print("| engine | model | same greedy tokens as liger | " + " | ".join(f"decode ms at {n}" for n in contexts) + " |")
    print("|---|---|---|" + "---:|" * len(contexts))
    other = [o for o in (a.other or "").split(",") if o]
    for r in rows:
        same = sum(x == y for x, y in zip(r["gen_ids"], ref["gen_ids"]))
        first = next((i for i, (x, y) in enumerate(zip(r["gen_ids"], ref["gen_ids"])) if x != y), None)
        agree = f"{same}/{len(ref['gen_ids'])}" + ("" if first is None else f" (first differs at {first})")
        if any(o in r["model"] for o in other):
            agree = "(another model)"
        ms = [str(r.get("decode_ms", {}).get(n, "")) for n in contexts]
        print(f"| {r['engine']} | {Path(r['model']).name} | {agree} | " + " | ".join(ms) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ids")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--prompt", default="Write a short story about a lighthouse keeper.")
    s.add_argument("--contexts", default="512,2048")
    s.add_argument("--raw", action="store_true", help="the prompt as is, without the chat template")
    s.set_defaults(func=cmd_ids)
    for name, func in (("liger", cmd_liger), ("hf", cmd_hf), ("llamacpp", cmd_llamacpp), ("vllm", cmd_vllm)):
        s = sub.add_parser(name)
        if name == "llamacpp":
            s.add_argument("--gguf", required=True)
            s.add_argument("--kv-f32", action="store_true", help="float32 KV cache (llama.cpp's default: f16)")
        else:
            s.add_argument("--model", required=True)
        s.add_argument("--ids", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--tokens", type=int, default=32)
        s.add_argument("--steps", type=int, default=16)
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--dtype", default="bfloat16", help="vllm: its CPU kernel for Qwen3.5's linear layers needs bf16")
        s.set_defaults(func=func)
    s = sub.add_parser("table")
    s.add_argument("results", nargs="+")
    s.add_argument("--other", help="comma-separated parts of the model paths of rows that run another model (the "
                   "teacher): their greedy tokens are not compared")
    s.set_defaults(func=cmd_table)
    a = p.parse_args(argv)
    a.func(a)


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    sys.exit(main())
