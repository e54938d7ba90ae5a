"""The sparse global cache (`LigerConfig.sparse_cache` = M): the window's softmax also covers, for each query,
the M tokens per key head that have left the window and that a linear memory reconstructs worst.

    window part:  softmax over the last `window` tokens (as without the option)
    sparse set:   the M valid tokens at positions <= t - window with the highest novelty score
                  (liger.ops.sparse.novelty_scores: LoLA's self-recall error, mixer-independent), ties to the
                  later token; a token's score is fixed when it is written
    o_win = one softmax over window + sparse set (liger.ops.sparse.merge_parts), then the mixer's own mix

Every token still enters the linear state. The cache adds, per layer and sequence, the M kept keys/values
with their scores and positions, the window tokens' scores and the novelty memory [Hk, D, D + 1]: a fixed
size at every context length. Prefill and decode compute the same sets (liger.ops.sparse), so generation
is exact; training runs the same rule (the choice of tokens carries no gradient).
"""

from __future__ import annotations

import math

import torch

from ..cache import LigerLayerCache
from ..config import LigerConfig
from ..distributed.context import current
from ..errors import ConfigError
from ..ops import window_attention_parts
from ..ops.sparse import SparseMemory, merge_parts, novelty_scores, sparse_attention_parts

Tensor = torch.Tensor


def window_and_sparse_parts(config: LigerConfig, qr: Tensor, kr: Tensor, k: Tensor, v: Tensor,
                            valid: Tensor | None, past: tuple[Tensor, Tensor, Tensor] | None, scale: float,
                            softcap: float | None, cache: LigerLayerCache | None
                            ) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, ...] | None]:
    """(num, den, m) [B, T, Hq, *] of one softmax over each query's window and sparse set, and the cache's new
    sparse tensors (None without a cache). qr, kr after RoPE; k before (for the scores); past: the cache's
    window (k, v, valid) or None."""
    if current() is not None:
        raise ConfigError("the sparse cache (--sparse-cache) does not run with the sequence split over ranks "
                          "(sequence parallelism): drop one of the two")
    W, M = config.window, config.sparse_cache
    prev = cache.sparse if cache is not None else None
    with torch.no_grad():
        score, novelty = novelty_scores(k.detach(), v.detach(), valid, None if prev is None else prev[5])
    win = window_attention_parts(qr, kr, v, W, scale=scale, key_valid=valid, past=past, softcap=softcap,
                                 with_max=True)
    spast = None if past is None or prev is None else (*past, prev[4])
    memory = None if prev is None else SparseMemory(*prev[:4])
    num, den, m, memory, ring_score = sparse_attention_parts(
        qr, kr, v, score, W, M, scale=scale, key_valid=valid, past=spast, memory=memory,
        start=cache.seen if cache is not None else 0, softcap=softcap)
    state = None
    if cache is not None:
        state = (memory.k.detach(), memory.v.detach(), memory.score, memory.pos, ring_score, novelty)
    return merge_parts(win, (num, den, m)), state


def sparse_cache_nbytes(config: LigerConfig, num_kv_heads: int, head_dim: int, element_size: int) -> int:
    """Bytes of one sequence's sparse cache in one layer: M keys and values (`element_size` each), their float32
    scores and int64 positions, the window tokens' scores and the float32 novelty memory; 0 without it."""
    M = config.sparse_cache
    if not M:
        return 0
    per_kept = num_kv_heads * (2 * head_dim * element_size + 4 + 8)
    return M * per_kept + (config.window - 1) * num_kv_heads * 4 + math.prod((num_kv_heads, head_dim, head_dim + 1)) * 4
