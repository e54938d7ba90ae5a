"""Linear attention with one scalar decay per head and token (RetNet, Lightning Attention, "simple GLA").

Recurrence, per batch element and key/value head (natural-log decay g <= 0, one value per head)::

    S_t = exp(g_t) S_{t-1} + k_t^T v_t        S: [K, V], float32
    o_t = scale * q_t S_t

Layout time-first: q [B, T, Hq, K], k [B, T, Hk, K], v [B, T, Hk, V], g [B, T, Hk] (or a constant per-head
`g_gamma` [Hk], as in flash-linear-attention); states float32 [B, Hk, K, V]. Grouped-query heads: Hq = G * Hk,
query head h reads key/value head h // G. Any float dtype in; float32 arithmetic; o in v's dtype.

Input contract (both ops; as `liger.ops.gla`'s): g <= 0, else ValueError naming the op, the input, the value
and its index; g_gamma finite and <= 0, else ValueError; a NaN/inf in any input reaches no earlier output (k,
v and g are checked: a non-finite value there, -inf gates included, makes NaN every output of its head from
its position on and the final state; see `liger.ops.common.check_values`); T = 0 gives an empty o and the
initial state. `check_inputs=False` skips the value check (one reduction per checked input, one host sync).
"""

from __future__ import annotations

import math

import torch

from .common import (check_qkv, check_shape, check_values, chunk_len, empty_result, float32_op, from_chunks, prepare,
                     recurrent_outputs, scalar_decays, scan_chunks, to_chunks)

Tensor = torch.Tensor


def retention_decays(num_heads: int) -> Tensor:
    """RetNet's fixed per-head log decays, float32 [num_heads]: log(1 - 2^(-5 - h)) for h = 0 .. H-1
    (gamma from 0.969 for head 0 towards 1 for the last heads). Use as `g_gamma`."""
    return torch.tensor([math.log1p(-(2.0 ** (-5 - h))) for h in range(num_heads)], dtype=torch.float32)


def _gates(k: Tensor, g: Tensor | None, g_gamma: Tensor | None) -> Tensor:
    """The per-token gates [B, T, Hk] from g, or from the constant g_gamma [Hk] (checked: finite, <= 0)."""
    B, T, Hk = k.shape[:3]
    if (g is None) == (g_gamma is None):
        raise ValueError("pass exactly one of g [B, T, H] and g_gamma [H]")
    if g is None:
        check_shape("g_gamma", g_gamma, (Hk,))
        bad = ~(g_gamma <= 0) | g_gamma.isinf()
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"g_gamma must be finite and <= 0 (a natural-log decay), got {g_gamma[i].item()} at "
                             f"index [{i}]")
        return g_gamma.float().view(1, 1, Hk).expand(B, T, Hk)
    check_shape("g", g, (B, T, Hk))
    return g


def _checked(name: str, op, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, g_gamma: Tensor | None,
             scale: float | None, initial_state: Tensor | None, output_final_state: bool, check_inputs: bool,
             **kw):
    """The input contract shared by both ops: shapes, T = 0, then the value check; None when `op` should run."""
    check_qkv(q, k, v, initial_state)
    _gates(k, g, g_gamma)
    B, T, Hq, K = q.shape
    if T == 0:
        return empty_result((B, 0, Hq, v.shape[-1]), v, initial_state, (B, k.shape[2], K, v.shape[-1]),
                            output_final_state)
    if not check_inputs:
        return None
    bad = check_values(name, q, {"k": k, "v": v}, {} if g is None else {"g": g})
    if bad is None:
        return None
    k, v, *g_ = bad.inputs
    return bad.poison(*op(q, k, v, g_[0] if g_ else None, g_gamma, scale, initial_state, output_final_state,
                          check_inputs=False, **kw))


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
    *,
    check_inputs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Token-by-token scalar-decay linear attention (the decode path); same signature, input contract and
    result as `chunk_simple_gla`. O(T) sequential steps."""
    done = _checked("fused_recurrent_simple_gla", fused_recurrent_simple_gla, q, k, v, g, g_gamma, scale,
                    initial_state, output_final_state, check_inputs)
    if done is not None:
        return done
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
    *,
    check_inputs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise-parallel scalar-decay linear attention: o [B, T, Hq, V] (v's dtype) and, if asked, the final
    state float32 [B, Hk, K, V]. Input contract: the module docstring's.

    Chunks of `chunk_size` tokens (the last zero-padded: k = v = 0, g = 0 change nothing). Inside a chunk
    the decay matrix exp(b_t - b_s) is one [C, C] matrix per head (b: cumulative log decay within the chunk,
    float64), so o_intra = ((q k^T) * D) v. Between chunks: the state entering chunk n reaches q_t through
    exp(b_t), the chunk's keys reach its end through exp(b_C - b_s), and states are carried by a scan over
    chunks. Every exponent is <= 0, so any finite g <= 0 and any T are safe.
    """
    done = _checked("chunk_simple_gla", chunk_simple_gla, q, k, v, g, g_gamma, scale, initial_state,
                    output_final_state, check_inputs, chunk_size=chunk_size)
    if done is not None:
        return done
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
