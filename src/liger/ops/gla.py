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

from .backend import fla_gla, use_fla
from .chunked import scan_chunks

Tensor = torch.Tensor

GATE_FLOOR = 21  # per-step log decay floor inside a chunk (see chunk_gla)
MAX_SPAN = 700  # largest |exponent| kept inside a chunk; float64 overflows at 709
FLOAT32_SPAN = 40.0  # largest |b - r| for the float32 intra-chunk matmul (float32 overflows at e^88)


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
    if use_fla(q):
        return fla_gla("recurrent", q, k, v, g, scale, initial_state, output_final_state)
    B, T, Hq, K = q.shape
    Hk, V = k.shape[2], v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    qf, kf, vf, gf = q.float(), k.float(), v.float(), g.float()
    S = q.new_zeros(B, Hk, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    outs = []
    for t in range(T):
        o, S = gla_step(S, qf[:, t], kf[:, t], vf[:, t], gf[:, t])
        outs.append(o)
    o = torch.stack(outs, 1) * scale
    return o.to(v.dtype), (S if output_final_state else None)


def gla_step(S: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Tensor, in_place: bool = False) -> tuple[Tensor, Tensor]:
    """One token of the recurrence, float32, scale 1: S <- diag(exp(g)) S + k^T v, then o = q S.

    q [B, Hq, K], k and g [B, Hk, K], v [B, Hk, V], S [B, Hk, K, V] -> (o [B, Hq, V], the new S).
    `in_place` writes the new state into S's storage (decoding without autograd: no allocation)."""
    B, Hk, K = k.shape
    if in_place:
        S = S.mul_(g.exp().unsqueeze(-1)).addcmul_(k.unsqueeze(-1), v.unsqueeze(-2))
    else:
        S = S * g.exp().unsqueeze(-1) + k.unsqueeze(-1) * v.unsqueeze(-2)
    o = torch.matmul(q.reshape(B, Hk, -1, K), S)  # [B, Hk, G, K] @ [B, Hk, K, V]
    return o.reshape(B, q.shape[1], -1), S


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
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise-parallel GLA: o [B, T, Hq, V] (v's dtype) and, if asked, the final state float32 [B, Hk, K, V].

    The sequence is cut into chunks of `chunk_size` tokens (fewer for short inputs; the last chunk is
    zero-padded: k = v = 0 and g = 0 change neither earlier outputs nor the state).

    - Between chunks (exact, float32): each chunk's contribution to the state, k_s exp(b_C - b_s), and the
      state entering each chunk, applied to q_t exp(b_t); b is the within-chunk cumulative log decay, so every
      exponent is <= 0. The states are passed on by a short scan over chunks.
    - Inside a chunk (one [G * C, C] matmul per chunk and key head, the G query heads stacked as rows):
      exp(b_t - b_s) = exp(b_t - r) exp(r - b_s) with r the cumulative decay at the chunk's midpoint, per
      channel. Gates are floored at -GATE_FLOOR per step here, so |b - r| <= C/2 * GATE_FLOOR = 672 fits
      float64's range (e^709) and nothing overflows for any g <= 0. The floor changes only pairs of tokens
      separated by a step with g < -21, whose true weight is below e^-21 = 8e-10; the result is exact to that.
      The matmul runs in float32 when every |b - r| <= FLOAT32_SPAN (40: factors up to e^40, products up to
      e^80 < float32's e^88), as for Liger's gates (logsigmoid(k) / 16, a span of a few units), and in float64
      otherwise (one reduction decides, per call).
    Nothing is ever multiplied by exp(-cumsum(g)) over a whole sequence, so any T works.
    On CUDA with flash-linear-attention installed, its Triton kernel runs instead (liger.ops.backend).
    """
    G = check_gla_inputs(q, k, v, g, initial_state)
    if use_fla(q):
        return fla_gla("chunk", q, k, v, g, scale, initial_state, output_final_state)
    B, T, Hq, K = q.shape
    Hk, V = k.shape[2], v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    if chunk_size > 2 * MAX_SPAN // GATE_FLOOR:
        raise ValueError(f"chunk_size must be <= {2 * MAX_SPAN // GATE_FLOOR}")
    C = min(chunk_size, max(16, 1 << (T - 1).bit_length()))
    out_dtype = v.dtype
    pad = (-T) % C
    q, k, v, g = (F.pad(x.float(), (0, 0, 0, 0, 0, pad)) if pad else x.float() for x in (q, k, v, g))
    N = (T + pad) // C

    # b: the within-chunk cumulative log decay [B, Hk, N, C, K], r its value at the chunk's midpoint. In float32
    # first; when some |b - r| exceeds FLOAT32_SPAN, everything inside the chunks is redone in float64.
    gc = g.view(B, N, C, Hk, K).permute(0, 3, 1, 2, 4).clamp(min=-GATE_FLOOR)
    inner = torch.float32
    b = gc.cumsum(-2)
    r = b[..., C // 2 - 1 : C // 2, :]  # [B, Hk, N, 1, K]
    d = b - r
    if d.numel() and d.abs().amax().item() > FLOAT32_SPAN:
        inner = torch.float64
        b = gc.double().cumsum(-2)
        r = b[..., C // 2 - 1 : C // 2, :]
        d = b - r
    # q_t exp(b_t - r) * scale, as [B, Hk, N, G * C, K]: the G query heads of a key head are rows of one matmul
    E = (d.exp() * scale).unsqueeze(3)
    q_r = (q.view(B, N, C, Hk, G, K).permute(0, 3, 1, 4, 2, 5).to(inner) * E).reshape(B, Hk, N, G * C, K)
    # k_s exp(r - b_s): not k / E, whose gradient holds 1 / E^2 (overflows)
    k_r = k.view(B, N, C, Hk, K).permute(0, 3, 1, 2, 4).to(inner) * (-d).exp()
    vc = _to(v.view(B, N, C, Hk, V).permute(0, 3, 1, 2, 4), torch.float32)  # [B, Hk, N, C, V]

    # Between chunks: the state entering chunk n, S_n, reaches query t as q_t exp(b_t) S_n
    # = q_r,t (exp(r) * S_n): in float32 the factor exp(r) <= 1 goes on the [K, V] states, not every query.
    b_last = b[..., -1:, :]
    k_out = (k_r * torch.exp(b_last - r)).float()  # k_s exp(b_C - b_s)
    U = torch.matmul(k_out.transpose(-1, -2), vc)  # [B, Hk, N, K, V]
    chunk_decay = b_last.exp().float().transpose(-1, -2)  # [B, Hk, N, K, 1]
    S = q.new_zeros(B, Hk, K, V) if initial_state is None else initial_state.float()
    S_in, S = scan_chunks(U, chunk_decay, S)  # [B, Hk, N, K, V]
    if inner == torch.float32:
        o = torch.matmul(q_r, S_in * r.exp().float().transpose(-1, -2))  # [B, Hk, N, G * C, V]
    else:  # q_r may exceed float32 (and exp(r) underflow it): apply exp(r) in float64 first
        q_in = (q_r.view(B, Hk, N, G, C, K) * r.exp().unsqueeze(3)).float()
        o = torch.matmul(q_in.view(B, Hk, N, G * C, K), S_in)

    # Inside chunks, added in place into o (which autograd does not need).
    A = torch.matmul(q_r, k_r.transpose(-1, -2)).view(B, Hk, N, G, C, C)
    # Causal: zero above the diagonal, in place (tril_ is one pass; a broadcast masked_fill_ took 1.5x as long).
    # The zeroed half may have held inf: it is overwritten, never multiplied.
    A = A.tril_().float()
    o = o.view(-1, G * C, V).baddbmm_(A.view(-1, G * C, C), vc.view(-1, C, V))

    o = o.view(B, Hk, N, G, C, V).permute(0, 2, 4, 1, 3, 5).reshape(B, N * C, Hq, V)[:, :T]
    return o.to(out_dtype), (S if output_final_state else None)


def _to(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous copy of a (permuted) view in `dtype`, in one pass."""
    return torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x)
