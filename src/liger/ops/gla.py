"""Gated linear attention (GLA) in plain PyTorch: a chunkwise-parallel form for training and prefill, and a
token-by-token form for decoding.

Recurrence, per batch element and key/value head (natural-log decay g <= 0, one value per key channel)::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        S: [K, V], float32
    o_t = scale * q_t S_t

Layout is time-first, as in flash-linear-attention >= 0.5: q, k: [B, T, H, K]; v: [B, T, H, V];
g: [B, T, H, K]; states: float32 [B, H, K, V]. Grouped-query attention is native: q may have G times as
many heads as k, v and g (query head h reads key/value head h // G, as transformers' `repeat_kv` does);
states then have k's head count. Inputs of any float dtype; all arithmetic is float32; o has v's dtype.

Written by hand because flash-linear-attention's kernels are Triton (CUDA only); on CUDA with that library
installed, `liger.ops.chunk_gla` dispatches to it instead (see `liger.ops.backend`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def float32_op(fn):
    """Run an op with autocast disabled: it casts to float32 itself, and autocast would lower its matmuls."""

    @functools.wraps(fn)
    def wrapper(q, *args, **kwargs):
        with torch.autocast(q.device.type, enabled=False):
            return fn(q, *args, **kwargs)

    return wrapper


def check_gla_inputs(q: Tensor, k: Tensor, v: Tensor, g: Tensor, initial_state: Tensor | None) -> int:
    """Validate shapes; return the query-group size G = Hq // Hk."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or g.dim() != 4:
        raise ValueError("q, k, v, g must be 4-D time-first tensors [B, T, H, D]")
    B, T, Hq, K = q.shape
    Bk, Tk, Hk, Kk = k.shape
    if (Bk, Tk, Kk) != (B, T, K) or g.shape != k.shape:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, g {tuple(g.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"shape mismatch: v {tuple(v.shape)} vs k {tuple(k.shape)}")
    if Hq % Hk:
        raise ValueError(f"q has {Hq} heads, not a multiple of k's {Hk}")
    if initial_state is not None and initial_state.shape != (B, Hk, K, v.shape[-1]):
        raise ValueError(
            f"initial_state must be [B, H, K, V] = {(B, Hk, K, v.shape[-1])}, got {tuple(initial_state.shape)}"
        )
    return Hq // Hk


@float32_op
def fused_recurrent_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Token-by-token GLA (the decode path). Same signature and result as `chunk_gla`; O(T) sequential steps."""
    G = check_gla_inputs(q, k, v, g, initial_state)
    B, T, Hq, K = q.shape
    Hk, V = k.shape[2], v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    qf = q.float().view(B, T, Hk, G, K)
    kf, vf, decay = k.float(), v.float(), g.float().exp()
    S = q.new_zeros(B, Hk, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    outs = []
    for t in range(T):
        S = S * decay[:, t, :, :, None] + kf[:, t, :, :, None] * vf[:, t, :, None, :]
        outs.append(torch.matmul(qf[:, t], S))  # [B, Hk, G, K] @ [B, Hk, K, V]
    o = torch.stack(outs, 1).reshape(B, T, Hq, V) * scale
    return o.to(v.dtype), (S if output_final_state else None)


@float32_op
def chunk_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    sub_chunk_size: int = 16,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise-parallel GLA: o [B, T, Hq, V] (v's dtype) and, if asked, the final state float32 [B, Hk, K, V].

    The sequence is cut into chunks of `chunk_size` tokens (the last one zero-padded: padding has k = v = 0
    and g = 0, so it changes neither earlier outputs nor the state). Per chunk: the state entering it is
    applied to q scaled by its within-chunk cumulative decay (exponent <= 0); the states are passed between
    chunks by a short scan over chunks. Inside a chunk, tokens interact through sub-chunks of
    `sub_chunk_size`: between sub-chunks the decay is split at the end of the earlier sub-chunk so that both
    factors have exponent <= 0; within a sub-chunk the decay is applied exactly, channel by channel. Nothing
    is ever multiplied by exp(-cumsum(g)), so no overflow for any g <= 0 and any T.
    """
    G = check_gla_inputs(q, k, v, g, initial_state)
    if chunk_size % sub_chunk_size:
        raise ValueError("chunk_size must be a multiple of sub_chunk_size")
    B, T, Hq, K = q.shape
    Hk, V = k.shape[2], v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    C, c = chunk_size, sub_chunk_size
    M = C // c
    out_dtype = v.dtype
    pad = (-T) % C
    q, k, v, g = (F.pad(x.float(), (0, 0, 0, 0, 0, pad)) for x in (q, k, v, g))
    N = (T + pad) // C

    # [B, Hk, N, (G,) C, D]
    qc = q.view(B, N, C, Hk, G, K).permute(0, 3, 1, 4, 2, 5)
    kc = k.view(B, N, C, Hk, K).permute(0, 3, 1, 2, 4)
    vc = v.view(B, N, C, Hk, V).permute(0, 3, 1, 2, 4)
    b = g.view(B, N, C, Hk, K).permute(0, 3, 1, 2, 4).cumsum(-2)  # within-chunk cumulative log decay
    b_last = b[..., -1, :]  # [B, Hk, N, K]

    # Each chunk's own contribution to the state after it, then the scan over chunks.
    k_to_end = kc * torch.exp(b_last.unsqueeze(-2) - b)
    U = torch.matmul(k_to_end.transpose(-1, -2), vc)  # [B, Hk, N, K, V]
    chunk_decay = b_last.exp().unsqueeze(-1)  # [B, Hk, N, K, 1]
    S = q.new_zeros(B, Hk, K, V) if initial_state is None else initial_state.float()
    entering = []
    for n in range(N):
        entering.append(S)
        S = chunk_decay[:, :, n] * S + U[:, :, n]
    S_in = torch.stack(entering, 2)  # [B, Hk, N, K, V]

    # Inter-chunk: q_t exp(b_t) S_in.
    q_dec = qc * b.unsqueeze(3).exp()
    o = torch.matmul(q_dec.reshape(B, Hk, N, G * C, K), S_in)  # [B, Hk, N, G*C, V]

    # Intra-chunk.
    A = _intra_chunk_scores(qc, kc, b, M, c)  # [B, Hk, N, G, C, C]
    o = o + torch.matmul(A, vc.unsqueeze(3)).reshape(B, Hk, N, G * C, V)

    o = (o * scale).view(B, Hk, N, G, C, V).permute(0, 2, 4, 1, 3, 5).reshape(B, N * C, Hq, V)[:, :T]
    return o.to(out_dtype), (S if output_final_state else None)


def _intra_chunk_scores(qc: Tensor, kc: Tensor, b: Tensor, M: int, c: int) -> Tensor:
    """A[t, s] = sum_k q_tk k_sk exp(b_tk - b_sk) for s <= t inside each chunk, 0 above the diagonal.

    qc: [B, H, N, G, C, K]; kc, b: [B, H, N, C, K]; returns [B, H, N, G, C, C] with C = M * c.
    """
    B, H, N, G, C, K = qc.shape
    qs = qc.reshape(B, H, N, G, M, c, K)
    ks = kc.reshape(B, H, N, M, c, K)
    bs = b.reshape(B, H, N, M, c, K)

    # Within a sub-chunk: explicit per-channel decay, masked to s <= t before exp.
    causal = torch.ones(c, c, dtype=torch.bool, device=qc.device).tril()
    diff = (bs.unsqueeze(-2) - bs.unsqueeze(-3)).masked_fill(~causal[:, :, None], float("-inf"))
    diag = torch.einsum("bhngmtk,bhnmsk,bhnmtsk->bhngmts", qs, ks, diff.exp())  # [B,H,N,G,M,c,c]

    # Between sub-chunks i > j: split the decay at e_j, the end of sub-chunk j.
    e = bs[..., -1, :]  # [B, H, N, M, K]
    k_scaled = ks * torch.exp(e.unsqueeze(-2) - bs)  # exponent <= 0
    # exponent b_{i,t} - e_j <= 0 for i > j; clamped where i <= j (those blocks are discarded below).
    q_expo = (bs.unsqueeze(4) - e[:, :, :, None, :, None, :]).clamp(max=0)  # [B,H,N,M(i),M(j),c,K]
    q_scaled = qs.unsqueeze(5) * q_expo.exp().unsqueeze(3)  # [B,H,N,G,M,M,c,K]
    off = torch.matmul(q_scaled, k_scaled[:, :, :, None, None].transpose(-1, -2))  # [B,H,N,G,M,M,c,c]
    lower = torch.ones(M, M, dtype=torch.bool, device=qc.device).tril(-1)
    off = off * lower[:, :, None, None]
    idx = torch.arange(M, device=qc.device)
    off[:, :, :, :, idx, idx] = diag
    return off.permute(0, 1, 2, 3, 4, 6, 5, 7).reshape(B, H, N, G, C, C)
