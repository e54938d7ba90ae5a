"""Sliding-window causal softmax attention: blocked prefill in O(T * window) time and memory, and decoding
from a rolling cache of the last `window - 1` keys and values.

Layout time-first: q [B, T, Hq, D], k and v [B, T, Hk, D] (grouped-query: Hq = G * Hk, query head h reads
key/value head h // G). A query sees itself and the `window - 1` tokens before it, valid keys only
(`key_valid` False marks padding); optional Gemma-2 logit soft-capping, cap * tanh(s / cap). Arithmetic in
float32; output in v's dtype; a query with no valid key in its window gets 0, so padding never produces NaN.

Input contract (`window_attention`, `window_attention_parts`): window >= 1; T = 0 gives an empty output.
Non-finite values are not refused but kept causal, as in `liger.ops.gla`: a NaN/inf in q_t reaches o_t alone;
one in the key or value at a valid position s (of x or `past`) makes NaN the outputs whose window holds s
(t = s .. s + window - 1) and no other (without the check, the blocked matmuls would carry 0 * NaN to the
block's earlier rows); at an invalid (padding) position it changes nothing. Finite inputs run exactly as
without the check (one sum per key/value input, one host sync); `check_inputs=False` skips it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import NonFinite, float32_op, zero_non_finite

Tensor = torch.Tensor


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    scale: float | None = None,
    key_valid: Tensor | None = None,
    past: tuple[Tensor, Tensor, Tensor] | None = None,
    block_size: int | None = None,
    softcap: float | None = None,
    use_sdpa: bool = True,
    *,
    check_inputs: bool = True,
) -> Tensor:
    """Sliding-window attention of the T new queries over `past` plus the T new keys: [B, T, Hq, D].

    past: (k [B, L, Hk, D], v [B, L, Hk, D], valid bool [B, L]) for the L <= window - 1 tokens before the new
        ones (as kept by `roll_window`), or None at the start of a sequence.
    Queries are processed in blocks of `block_size` (default min(T, window)); block n attends to its own
    keys plus the `window - 1` before it, so scores are [block, block + window - 1], never [T, T].
    use_sdpa: each block through `F.scaled_dot_product_attention` with a [block, block + window - 1] mask
        (PyTorch's fused attention kernels) instead of the explicit softmax of `window_attention_parts`;
        on by default, and ignored under soft-capping (which SDPA lacks). Same result (tests/test_ops_window.py);
        on CPU 1.7x faster forward, 1.4x forward+backward (T=4,096, window 64, the teacher's heads).
    Input contract: the module docstring's.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    if q.shape[1] == 0:
        return v.new_empty(*q.shape[:3], v.shape[-1])
    if check_inputs and (bad := _check_window(q, k, v, window, key_valid, past)):
        k, v, key_valid, past = bad.inputs
        o = window_attention(q, k, v, window, scale, key_valid, past, block_size, softcap, use_sdpa,
                             check_inputs=False)
        return bad.poison(o, None)[0]
    if use_sdpa and not softcap:
        return _window_sdpa(q, k, v, window, scale, key_valid, past, block_size).to(v.dtype)
    num, den = window_attention_parts(q, k, v, window, scale, key_valid, past, block_size, softcap,
                                      check_inputs=False)
    return (num / den.clamp_min(1e-30)).to(v.dtype)


def _check_window(q: Tensor, k: Tensor, v: Tensor, window: int, key_valid: Tensor | None,
                  past: tuple[Tensor, Tensor, Tensor] | None) -> NonFinite | None:
    """The window ops' value check: None when every key and value is finite (one sum per input, one host
    sync); otherwise k, v, key_valid and past with non-finite keys and values zeroed, and the outputs those
    reach (q needs no check: a non-finite q_t reaches o_t alone)."""
    kv = [k, v] + ([] if past is None else list(past[:2]))
    with torch.no_grad():
        if all(map(math.isfinite, torch.stack([x.sum().float() for x in kv]).tolist())):
            return None
        B, T, Hq = q.shape[:3]
        Hk = k.shape[2]
        bad = ~(torch.isfinite(k).all(-1) & torch.isfinite(v).all(-1))  # [B, T, Hk]
        valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if key_valid is None else key_valid.bool()
        if past is not None:  # the keys before x
            bad = torch.cat([~(torch.isfinite(past[0]).all(-1) & torch.isfinite(past[1]).all(-1)), bad], 1)
            valid = torch.cat([past[2].bool(), valid], 1)
        L = bad.shape[1] - T
        count = F.pad((bad & valid.unsqueeze(-1)).int().cumsum(1), (0, 0, 1, 0))  # [B, L + T + 1, Hk]
        p = torch.arange(T, device=q.device) + L  # the queries' positions among the keys
        reached = (count[:, p + 1] - count[:, (p - window + 1).clamp(min=0)]) > 0  # [B, T, Hk]
    past = None if past is None else (zero_non_finite(past[0]), zero_non_finite(past[1]), past[2])
    return NonFinite([zero_non_finite(k), zero_non_finite(v), key_valid, past],
                     reached.repeat_interleave(Hq // Hk, 2), None)


def _blocks(q: Tensor, k: Tensor, v: Tensor, window: int, key_valid: Tensor | None,
            past: tuple[Tensor, Tensor, Tensor] | None, block_size: int | None):
    """The blocked layout shared by both window paths, float32: qb [B, N, P, Hk, G, D], keys kb and values vb
    [B, N, Hk, D, P + L] (block n's own P keys after the L = window - 1 before it) and `allowed` bool
    [B, N, 1, 1, P, P + L] (causal, within the window, valid key)."""
    B, T, Hq, D = q.shape
    Hk = k.shape[2]
    if window < 1:
        raise ValueError("window must be >= 1")
    L = window - 1
    dev = q.device
    valid = torch.ones(B, T, dtype=torch.bool, device=dev) if key_valid is None else key_valid.bool()
    if past is not None:
        pk, pv, pvalid = past
        kk = torch.cat([pk.to(k.dtype), k], 1)
        vv = torch.cat([pv.to(v.dtype), v], 1)
        valid = torch.cat([pvalid, valid], 1)
    else:
        kk, vv = k, v
    # left-pad the keys to exactly L tokens of history (invalid)
    missing = L + T - kk.shape[1]
    if missing < 0:
        raise ValueError(f"past holds {kk.shape[1] - T} tokens, more than window - 1 = {L}")
    P = max(1, min(T, window)) if block_size is None else block_size
    N = -(-T // P)
    tail = N * P - T
    kk = F.pad(kk.float(), (0, 0, 0, 0, missing, tail))
    vv = F.pad(vv.float(), (0, 0, 0, 0, missing, tail))
    valid = F.pad(valid, (missing, tail), value=False)
    qb = F.pad(q.float(), (0, 0, 0, 0, 0, tail)).view(B, N, P, Hk, Hq // Hk, D)

    # keys of block n: padded positions n*P .. n*P + P + L - 1
    kb = kk.unfold(1, P + L, P)  # [B, N, Hk, D, P+L]
    vb = vv.unfold(1, P + L, P)
    vb_valid = valid.unfold(1, P + L, P)  # [B, N, P+L]
    rel = torch.arange(P + L, device=dev)[None, :] - torch.arange(P, device=dev)[:, None]  # key j - query p
    allowed = (rel >= 0) & (rel <= L)  # [P, P+L]
    allowed = allowed[None, None, None, None] & vb_valid[:, :, None, None, None, :]
    return qb, kb, vb, allowed


@float32_op
def _window_sdpa(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float | None, key_valid: Tensor | None,
                 past: tuple[Tensor, Tensor, Tensor] | None, block_size: int | None) -> Tensor:
    """`window_attention` with one scaled_dot_product_attention over all blocks, float32 [B, T, Hq, D]."""
    B, T, Hq, D = q.shape
    qb, kb, vb, allowed = _blocks(q, k, v, window, key_valid, past, block_size)
    _, N, P, Hk, G, _ = qb.shape
    # a query with no valid key may see every key of its block (finite, no NaN); its output is zeroed below
    has_key = allowed.any(-1, keepdim=True)  # [B, N, 1, 1, P, 1]
    mask = (allowed | ~has_key).reshape(B * N, 1, P, -1)
    o = F.scaled_dot_product_attention(
        qb.permute(0, 1, 3, 4, 2, 5).reshape(B * N, Hq, P, D),  # head h = hk * G + g, as repeat_kv
        kb.permute(0, 1, 2, 4, 3).reshape(B * N, Hk, -1, D),
        vb.permute(0, 1, 2, 4, 3).reshape(B * N, Hk, -1, vb.shape[3]),
        attn_mask=mask, scale=D**-0.5 if scale is None else scale, enable_gqa=G > 1,
    )  # [B * N, Hq, P, Dv]
    o = o * has_key.reshape(B * N, 1, P, 1)
    return o.view(B, N, Hq, P, -1).permute(0, 1, 3, 2, 4).reshape(B, N * P, Hq, -1)[:, :T]


@float32_op
def window_attention_parts(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    scale: float | None = None,
    key_valid: Tensor | None = None,
    past: tuple[Tensor, Tensor, Tensor] | None = None,
    block_size: int | None = None,
    softcap: float | None = None,
    *,
    check_inputs: bool = True,
    with_max: bool = False,
) -> tuple[Tensor, ...]:
    """Unnormalised window attention, float32: num = sum_s exp(s_ts - m_t) v_s [B, T, Hq, D] and
    den = sum_s exp(s_ts - m_t) [B, T, Hq, 1], with m_t the largest score in query t's window (0 if it has
    no valid key); `with_max`: also m [B, T, Hq, 1] (to merge with other key sets, liger.ops.sparse).
    `window_attention` is num / den; LoLCATs adds its linear terms to both first. Input contract: the module
    docstring's (the outputs reached by a non-finite input: NaN in num and den)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    B, T, Hq, D = q.shape
    if T == 0:
        empty = q.new_empty(B, 0, Hq, 1, dtype=torch.float32)
        return (q.new_empty(B, 0, Hq, v.shape[-1], dtype=torch.float32), empty) + ((empty,) if with_max else ())
    if check_inputs and (bad := _check_window(q, k, v, window, key_valid, past)):
        k, v, key_valid, past = bad.inputs
        num, den, *m = window_attention_parts(q, k, v, window, scale, key_valid, past, block_size, softcap,
                                              check_inputs=False, with_max=with_max)
        return (bad.poison(num, None)[0], bad.poison(den, None)[0], *m)
    scale = D**-0.5 if scale is None else scale
    qb, kb, vb, allowed = _blocks(q, k, v, window, key_valid, past, block_size)
    N, P = qb.shape[1:3]
    s = torch.einsum("bnphgd,bnhdj->bnhgpj", qb, kb) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    p = torch.exp(s - m)
    den = p.sum(-1).permute(0, 1, 4, 2, 3).reshape(B, N * P, Hq, 1)[:, :T]
    num = torch.einsum("bnhgpj,bnhdj->bnphgd", p, vb).reshape(B, N * P, Hq, -1)[:, :T]
    if with_max:
        return num, den, m.permute(0, 1, 4, 2, 3, 5).reshape(B, N * P, Hq, 1)[:, :T]
    return num, den


def window_step(q: Tensor, ring: tuple[Tensor, Tensor, Tensor], k: Tensor, v: Tensor, scale: float,
                key_valid: Tensor | None = None) -> Tensor:
    """One decode step: the new query over the cached `window - 1` tokens plus the new one, float32 [B, Hq, D].

    q [B, Hq, D] and k [B, Hk, D] after RoPE, v [B, Hk, D]; ring: the cache's (k, v, valid) buffers
    [B, window - 1, ...] in any slot order (attention does not depend on it); key_valid [B] or None (valid).
    One scaled_dot_product_attention over window keys; no soft-capping."""
    rk, rv, rvalid = ring
    B, Hq = q.shape[:2]
    new_valid = torch.ones(B, 1, dtype=torch.bool, device=q.device) if key_valid is None else key_valid.bool()[:, None]
    keys = torch.cat([rk, k.to(rk.dtype)[:, None]], 1).transpose(1, 2).float()  # [B, Hk, window, D]
    values = torch.cat([rv, v.to(rv.dtype)[:, None]], 1).transpose(1, 2).float()
    mask = torch.cat([rvalid, new_valid], 1)[:, None, None, :]
    o = F.scaled_dot_product_attention(q[:, :, None].float(), keys, values, attn_mask=mask, scale=scale,
                                       enable_gqa=Hq != k.shape[1])
    return o.view(B, Hq, -1)


def roll_window(
    past: tuple[Tensor, Tensor, Tensor] | None,
    k: Tensor,
    v: Tensor,
    key_valid: Tensor | None,
    window: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The last `window - 1` keys, values and validity flags after appending the new tokens: fixed-size
    buffers [B, window - 1, Hk, D] (invalid zeros where fewer tokens were seen), so a cache built on them
    takes the same bytes at every context length."""
    B, T, Hk, D = k.shape
    L = window - 1
    valid = torch.ones(B, T, dtype=torch.bool, device=k.device) if key_valid is None else key_valid.bool()
    if past is None:
        past = (
            k.new_zeros(B, L, Hk, D),
            v.new_zeros(B, L, Hk, v.shape[-1]),
            torch.zeros(B, L, dtype=torch.bool, device=k.device),
        )
    pk, pv, pvalid = past
    if T >= L:
        return k[:, T - L :].clone(), v[:, T - L :].clone(), valid[:, T - L :].clone()
    return (
        torch.cat([pk[:, T:], k.to(pk.dtype)], 1),
        torch.cat([pv[:, T:], v.to(pv.dtype)], 1),
        torch.cat([pvalid[:, T:], valid], 1),
    )
