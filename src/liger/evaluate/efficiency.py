"""Speed and memory of prefill and decoding, for any causal LM (softmax or linearized), at given context
lengths and batch sizes. Used by `liger eval`; `liger bench model` has its own back-to-back timing.

For each (length, batch): random token ids (seeded) are prefilled in one forward pass with a fresh cache
(`use_cache=True`, logits only for the last position), then `decode_tokens` single-token steps are run with
that cache, each feeding the previous step's argmax. Timings are wall-clock (`time.perf_counter`) of one run
after one small warm-up per call (repeat the call to gauge noise: on a shared CPU it is often 2x). Memory is
the process's peak RSS during prefill + decode (see liger.evaluate.memory) and, exactly, the bytes of every
tensor of the cache after the last step (`liger.cache_nbytes`: recurrent states and windows of linearized
layers, keys/values of softmax layers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..cache import cache_nbytes
from .memory import PeakRSS


def _step(model: nn.Module, ids: torch.Tensor, cache=None):
    out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)


@torch.no_grad()
def measure_one(model: nn.Module, length: int, batch: int, decode_tokens: int = 16, seed: int = 0) -> dict:
    """One measurement; see the module docstring. Returns a row (all times in seconds, memory in bytes):
    {"length", "batch", "prefill_s", "prefill_tokens_per_s", "decode_tokens", "decode_s",
     "decode_tokens_per_s" (batch * steps / decode_s), "decode_ms_per_step", "cache_bytes",
     "cache_bytes_per_sequence", "peak_rss_bytes", "peak_extra_bytes", "memory_method"}."""
    if length < 1 or batch < 1 or decode_tokens < 0:
        raise ValueError(f"need length >= 1, batch >= 1, decode_tokens >= 0; got {length}, {batch}, {decode_tokens}")
    device = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=gen).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        cache, nxt = _step(model, ids)
        sync()
        t1 = time.perf_counter()
        for _ in range(decode_tokens):
            cache, nxt = _step(model, nxt, cache)
        sync()
        t2 = time.perf_counter()
        nbytes = cache_nbytes(cache)
        del cache
    prefill, decode = t1 - t0, t2 - t1
    return {
        "length": length,
        "batch": batch,
        "prefill_s": prefill,
        "prefill_tokens_per_s": batch * length / prefill,
        "decode_tokens": decode_tokens,
        "decode_s": decode,
        "decode_tokens_per_s": batch * decode_tokens / decode if decode_tokens else None,
        "decode_ms_per_step": 1000 * decode / decode_tokens if decode_tokens else None,
        "cache_bytes": nbytes,
        "cache_bytes_per_sequence": nbytes // batch,
        "peak_rss_bytes": mem.peak,
        "peak_extra_bytes": mem.extra,
        "memory_method": mem.method,
    }


def measure(
    model: nn.Module,
    lengths: Sequence[int],
    batch_sizes: Sequence[int] = (1,),
    decode_tokens: int = 16,
    seed: int = 0,
    warmup: bool = True,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """`measure_one` for every (length, batch size), lengths in the outer loop, in the given order; one row
    each. No length limit is enforced here (callers check the model's limit). `on_result(row)` is called
    after each measurement (for progress bars). With `warmup`, a 32-token prefill and two decode steps run
    first so one-time costs (lazy initialisation, thread pools) are not timed."""
    model.eval()
    if warmup:
        measure_one(model, min(32, min(lengths)), 1, decode_tokens=2, seed=seed)
    rows = []
    for length in lengths:
        for batch in batch_sizes:
            row = measure_one(model, length, batch, decode_tokens, seed)
            rows.append(row)
            if on_result is not None:
                on_result(row)
    return rows
