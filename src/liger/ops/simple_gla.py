"""Linear attention with one scalar decay per head and token (RetNet, Lightning Attention, "simple GLA").

Recurrence, per batch element and key/value head (natural-log decay g <= 0, one value per head)::

    S_t = exp(g_t) S_{t-1} + k_t^T v_t        S: [K, V], float32
    o_t = scale * q_t S_t

Layout time-first: q [B, T, Hq, K], k [B, T, Hk, K], v [B, T, Hk, V], g [B, T, Hk] (or a constant per-head
`g_gamma` [Hk], as in flash-linear-attention); states float32 [B, Hk, K, V]. Grouped-query heads: Hq = G * Hk,
query head h reads key/value head h // G. Any float dtype in; float32 arithmetic; o in v's dtype.
"""

from __future__ import annotations

import math

import torch

from .common import (check_shape, chunk_len, float32_op, from_chunks, prepare, recurrent_outputs, scalar_decays,
                     scan_chunks, to_chunks)

Tensor = torch.Tensor


def retention_decays(num_heads: int) -> Tensor:
    """RetNet's fixed per-head log decays, float32 [num_heads]: log(1 - 2^(-5 - h)) for h = 0 .. H-1
    (gamma from 0.969 for head 0 towards 1 for the last heads). Use as `g_gamma`."""
    return torch.tensor([math.log1p(-(2.0 ** (-5 - h))) for h in range(num_heads)], dtype=torch.float32)


def _gates(k: Tensor, g: Tensor | None, g_gamma: Tensor | None) -> Tensor:
    """The per-token gates [B, T, Hk] from g, or from the constant g_gamma [Hk]."""
    B, T, Hk = k.shape[:3]
    if (g is None) == (g_gamma is None):
        raise ValueError("pass exactly one of g [B, T, H] and g_gamma [H]")
    if g is None:
        check_shape("g_gamma", g_gamma, (Hk,))
        return g_gamma.float().view(1, 1, Hk).expand(B, T, Hk)
    check_shape("g", g, (B, T, Hk))
    return g


@float32_op
def fused_recurrent_simple_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    g_gamma: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Token-by-token scalar-decay linear attention (the decode path); same signature and result as
    `chunk_simple_gla`. O(T) sequential steps."""
    _, scale, S = prepare(q, k, v, scale, initial_state)
    g = _gates(k, g, g_gamma)
    kf, vf, decay = k.float(), v.float(), g.float().exp()

    def step(S: Tensor, t: int) -> Tensor:
        return S * decay[:, t, :, None, None] + kf[:, t, :, :, None] * vf[:, t, :, None, :]

    o, S = recurrent_outputs(q.float(), S, step)
    return (o * scale).to(v.dtype), (S if output_final_state else None)


@float32_op
def chunk_simple_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    g_gamma: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise-parallel scalar-decay linear attention: o [B, T, Hq, V] (v's dtype) and, if asked, the final
    state float32 [B, Hk, K, V].

    Chunks of `chunk_size` tokens (the last zero-padded: k = v = 0, g = 0 change nothing). Inside a chunk
    the decay matrix exp(b_t - b_s) is one [C, C] matrix per head (b: cumulative log decay within the chunk,
    float64), so o_intra = ((q k^T) * D) v. Between chunks: the state entering chunk n reaches q_t through
    exp(b_t), the chunk's keys reach its end through exp(b_C - b_s), and states are carried by a scan over
    chunks. Every exponent is <= 0, so any finite g <= 0 and any T are safe.
    """
    G, scale, S0 = prepare(q, k, v, scale, initial_state)
    g = _gates(k, g, g_gamma)
    T = q.shape[1]
    C = chunk_len(T, chunk_size)
    qc = to_chunks(q, C, groups=G)  # [B, Hk, N, G, C, K]
    kc, vc = to_chunks(k, C), to_chunks(v, C)  # [B, Hk, N, C, D]
    b, D = scalar_decays(to_chunks(g, C))  # [B, Hk, N, C], [B, Hk, N, C, C]
    b_last = b[..., -1:]

    A = torch.matmul(qc, kc.unsqueeze(3).transpose(-1, -2)) * D.unsqueeze(3)  # [B, Hk, N, G, C, C]
    o = torch.matmul(A, vc.unsqueeze(3))  # [B, Hk, N, G, C, V]

    k_out = kc * (b_last - b).exp().float().unsqueeze(-1)  # k_s exp(b_C - b_s)
    U = torch.matmul(k_out.transpose(-1, -2), vc)  # [B, Hk, N, K, V]
    S_in, S = scan_chunks(U, b_last.exp().float().unsqueeze(-1), S0)
    q_in = qc * b.exp().float()[:, :, :, None, :, None]  # q_t exp(b_t)
    o = o + torch.matmul(q_in.flatten(3, 4), S_in).view(o.shape)
    return from_chunks(o * scale, T).to(v.dtype), (S if output_final_state else None)
