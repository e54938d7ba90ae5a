"""Speed and memory of prefill and decoding for causal LMs (softmax or linearized), timed back to back at each
(context, batch): the one measurement behind `liger eval` (efficiency section) and `liger bench model`.

For each (context L, batch B) and each model in turn:
- prefill: one forward pass over L seeded random token ids with a fresh cache, logits for the last position
  only; wall time (`time.perf_counter`, CUDA synchronised). With `max_prefill_tokens` and B * L above it, the
  cache is *synthetic* instead (`synthetic_cache`: random contents of the shapes a prefill would leave); a
  decode step costs the same on either, and the row's `cache_source` says which was used.
- decode: `decode_tokens` single-token steps with that cache, each feeding the previous argmax; the median
  and mean step time (ms per step for the whole batch).
- memory: the process's peak RSS during prefill + decode and the part above the RSS at the start
  (`peak_extra`; see liger.evaluate.memory), and the exact bytes of every cache tensor after the last step
  (`liger.cache_nbytes`: recurrent states and windows of linearized layers, keys/values of softmax layers).
Models take turns at each size, so a drift in machine speed (2x on a shared CPU) hits them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import DynamicCache

from ..arch import decoder_layers
from ..cache import CACHE_KWARG, LigerCache, LigerLayerCache, cache_nbytes, output_cache
from ..surgery import linearized_layer_indices
from .memory import PeakRSS


def _step(model: nn.Module, ids: torch.Tensor, cache=None):
    out = model(ids, use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache})
    return output_cache(out), out.logits[:, -1].argmax(-1, keepdim=True)


def synthetic_cache(model: nn.Module, batch: int, length: int, seed: int = 0):
    """A cache as if `length` tokens had been prefilled, with random contents: DynamicCache keys/values
    [B, Hk, L, D] for softmax layers; for linearized layers float32 states of the shapes their mixer keeps
    (`state_shapes`, e.g. [B, Hk, D, D] for gla) and full windows."""
    cfg = model.config.get_text_config()
    param = next(model.parameters())
    dtype, device = param.dtype, param.device
    gen = torch.Generator().manual_seed(seed)
    linear = set(linearized_layer_indices(model))
    cache = LigerCache(model) if linear else DynamicCache()
    for i, layer in enumerate(decoder_layers(model)):
        attn = layer.self_attn
        hk = getattr(attn, "num_kv_heads", None) or cfg.num_key_value_heads
        d = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if i in linear:
            lc: LigerLayerCache = cache.layers[i]
            w = attn.liger.window
            states = tuple((torch.randn(batch, *shape, generator=gen) * 0.1).to(device)
                           for shape in attn.core.state_shapes())
            state = states[0] if len(states) == 1 else states
            window = None
            if w > 0:
                window = (torch.randn(batch, w - 1, hk, d, generator=gen).to(device, dtype),
                          torch.randn(batch, w - 1, hk, d, generator=gen).to(device, dtype),
                          torch.ones(batch, w - 1, dtype=torch.bool, device=device))
            lc.store(state, window, length)
        else:
            k = torch.randn(batch, hk, length, d, generator=gen).to(device, dtype)
            cache.update(k, torch.randn_like(k), i)
    return cache


@torch.no_grad()
def measure_one(model: nn.Module, context: int, batch: int, decode_tokens: int = 16, prefill: bool = True,
                seed: int = 0) -> dict:
    """One measurement (see the module docstring). Returns {"context", "batch", "cache_source", "prefill_s",
    "prefill_tokens_per_s", "decode_tokens", "decode_ms" (median), "decode_ms_mean", "decode_tokens_per_s",
    "cache_bytes", "cache_bytes_per_sequence", "peak_rss_bytes", "peak_extra_bytes", "memory_method"};
    prefill values are None for a synthetic cache, decode values None with decode_tokens 0."""
    if context < 1 or batch < 1 or decode_tokens < 0:
        raise ValueError(f"need context >= 1, batch >= 1, decode_tokens >= 0; got {context}, {batch}, {decode_tokens}")
    device = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps: list[float] = []
    with PeakRSS() as mem:
        if prefill:
            ids = torch.randint(0, vocab, (batch, context), generator=gen).to(device)
            t0 = time.perf_counter()
            cache, nxt = _step(model, ids)
            sync()
            prefill_s = time.perf_counter() - t0
        else:
            cache, prefill_s = synthetic_cache(model, batch, context, seed), None
            nxt = torch.randint(0, vocab, (batch, 1), generator=gen).to(device)
        for _ in range(decode_tokens):
            t0 = time.perf_counter()
            cache, nxt = _step(model, nxt, cache)
            sync()
            steps.append(time.perf_counter() - t0)
        nbytes = cache_nbytes(cache)
        del cache
    median = 1e3 * sorted(steps)[len(steps) // 2] if steps else None
    return {
        "context": context, "batch": batch, "cache_source": "prefill" if prefill else "synthetic",
        "prefill_s": prefill_s, "prefill_tokens_per_s": batch * context / prefill_s if prefill_s else None,
        "decode_tokens": decode_tokens, "decode_ms": median,
        "decode_ms_mean": 1e3 * sum(steps) / len(steps) if steps else None,
        "decode_tokens_per_s": 1e3 * batch / median if median else None,
        "cache_bytes": nbytes, "cache_bytes_per_sequence": nbytes // batch,
        "peak_rss_bytes": mem.peak, "peak_extra_bytes": mem.extra, "memory_method": mem.method,
    }


def measure(
    models: dict[str, nn.Module],
    contexts: Sequence[int],
    batch_sizes: Sequence[int] = (1,),
    decode_tokens: int = 16,
    seed: int = 0,
    warmup: bool = True,
    max_prefill_tokens: int | None = None,
    skip: Callable[[str, int, int], bool] | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """`measure_one` for every (context, batch) -- contexts outer, batches inner, the models back to back
    in the given order -- one row each, tagged with "model" (its key in `models`). No length limit is
    enforced here (callers check the model's). `skip(model, context, batch)` leaves a row out; with
    `max_prefill_tokens`, B * L above it decodes from a synthetic cache. `on_result(row)` after each row.
    With `warmup`, a 32-token prefill and two decode steps per model run first (lazy initialisation,
    thread pools) and are not timed."""
    for m in models.values():
        m.eval()
        if warmup:
            measure_one(m, min(32, min(contexts)), 1, decode_tokens=2, seed=seed)
    rows = []
    for L in contexts:
        for B in batch_sizes:
            for name, m in models.items():
                if skip is not None and skip(name, L, B):
                    continue
                prefill = max_prefill_tokens is None or B * L <= max_prefill_tokens
                row = {"model": name, **measure_one(m, L, B, decode_tokens, prefill, seed)}
                rows.append(row)
                if on_result is not None:
                    on_result(row)
    return rows
