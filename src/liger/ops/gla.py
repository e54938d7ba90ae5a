"""Gated linear attention (GLA) in plain PyTorch: a chunkwise-parallel form for training and prefill, and a
token-by-token form for decoding.

Recurrence, per batch element and key/value head (natural-log decay g <= 0, one value per key channel)::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        S: [K, V], float32
    o_t = scale * q_t S_t

Layout is time-first, as in flash-linear-attention >= 0.5: q, k: [B, T, H, K]; v: [B, T, H, V];
g: [B, T, H, K]; states: float32 [B, H, K, V]. Grouped-query attention is native: q may have G times as
many heads as k, v and g (query head h reads key/value head h // G, as transformers' `repeat_kv` does);
states then have k's head count. Inputs of any float dtype; all arithmetic is float32; o has v's dtype.

Input contract (both ops, checked before anything runs, also before the CUDA dispatch):
- g <= 0: a gate > 0 (+inf included) raises ValueError naming the op, the input, the value and its index.
  (The chunked form's stability rests on it: at g = +1 it would give ~1e27 and then inf/NaN.)
- Non-finite values are not refused (a NaN in training then surfaces as a non-finite loss, on every rank
  alike) but kept causal: an output before a NaN/inf in any input never depends on it, and the outputs it
  reaches are NaN, as in the token-by-token recurrence (`liger.ops.common.check_values`: v and g are
  checked; a NaN/inf in v or g, -inf gates included, makes NaN every output of its head from its position
  on and the final state; q, k and the state need no check: a non-finite q_t reaches o_t alone, k_s and the
  state the outputs after them). Finite inputs run exactly as without the check, which costs one reduction
  per checked input and one host sync (about 1% of the op, see the README's Ops section).
  `check_inputs=False` skips it (no sync; gates > 0 then give inf/NaN, and a NaN in v or g may reach
  earlier outputs of its 64-token chunk).
- T = 0: an empty o and the initial state (float32 copy; zeros if None) as the final state.

Written by hand because flash-linear-attention's kernels are Triton (CUDA only); on CUDA with that library
installed, `liger.ops.chunk_gla` dispatches to it instead (see `liger.ops.backend`); on CPU without autograd,
to a C++ forward of the same arithmetic when a compiler is present (see `chunk_gla`, `liger.ops.extension`).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .backend import fla_gla, use_fla
from .common import (check_qkv, check_shape, check_values, chunk_len, chunk_view, empty_result, float32_op, from_chunks,
                     initial, scan_chunks, to_chunks)

Tensor = torch.Tensor

GATE_FLOOR = 21  # per-step log decay floor inside a chunk (see chunk_gla)
MAX_SPAN = 700  # largest |exponent| kept inside a chunk; float64 overflows at 709
FLOAT32_SPAN = 40.0  # largest |b - r| for the float32 intra-chunk matmul (float32 overflows at e^88)


_last_path: str | None = None


def _ran(path: str) -> None:
    global _last_path
    _last_path = path


def last_chunk_gla_path() -> str | None:
    """Which implementation the last `chunk_gla` call in this process ran (for benchmarks and tests):
    "native" (the C++ forward), "torch" (the PyTorch form) or "fla" (flash-linear-attention, CUDA); None
    before any call (T = 0 runs neither)."""
    return _last_path


def native_gla():
    """The C++ forward of chunk_gla (liger/ops/csrc/chunk_gla.cpp, built on first use), or None: no compiler,
    a failed build or LIGER_NO_EXTENSIONS=1 (`liger.ops.extension`)."""
    from .extension import load_extension

    return load_extension("liger_gla", ["chunk_gla.cpp"], openmp=True, required=("chunk_gla_fwd",))


def _native_applies(q: Tensor, k: Tensor, v: Tensor, g: Tensor, initial_state: Tensor | None) -> bool:
    """Whether the C++ forward may run: no gradient to record (grad mode off, or no input requiring one),
    CPU float32 q, k, v, g (the state: any float dtype on CPU), neither torch.compile tracing nor a
    TorchDispatchMode active (FlopCounterMode, fake tensors: they need the PyTorch form's aten ops)."""
    xs = (q, k, v, g) if initial_state is None else (q, k, v, g, initial_state)
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        return False
    if any(x.device.type != "cpu" for x in xs) or any(x.dtype != torch.float32 for x in xs[:4]):
        return False
    return not (torch.compiler.is_compiling() or is_in_torch_dispatch_mode())


def check_gla_inputs(q: Tensor, k: Tensor, v: Tensor, g: Tensor, initial_state: Tensor | None) -> int:
    """Validate shapes (g as k, the state [B, Hk, K, V]); return the query-group size G = Hq // Hk."""
    G = check_qkv(q, k, v, initial_state)
    check_shape("g", g, k.shape)
    return G


def _checked(q: Tensor, k: Tensor, v: Tensor, g: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The inputs `check_values` reads: v and g (the torch forms' masks keep a NaN/inf in q or k causal);
    on the CUDA path k as well (flash-linear-attention's kernels are not checked for it here)."""
    return ({"k": k, "v": v} if use_fla(q) else {"v": v}), {"g": g}


def gated_chunk_len(T: int, chunk_size: int) -> int:
    """`chunk_len` for the ops that floor their gates at -GATE_FLOOR inside a chunk: chunk_size may be at most
    2 * MAX_SPAN // GATE_FLOOR, so that |b - r| <= C/2 * GATE_FLOOR stays within float64's range."""
    if chunk_size > 2 * MAX_SPAN // GATE_FLOOR:
        raise ValueError(f"chunk_size must be <= {2 * MAX_SPAN // GATE_FLOOR}")
    return chunk_len(T, chunk_size)


@float32_op
def fused_recurrent_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    *,
    check_inputs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Token-by-token GLA (the decode path). Same signature, input contract and result as `chunk_gla`; O(T)
    sequential steps."""
    check_gla_inputs(q, k, v, g, initial_state)
    B, T, _, K = q.shape
    if T == 0:
        return empty_result((B, 0, q.shape[2], v.shape[-1]), v, initial_state, (B, k.shape[2], K, v.shape[-1]),
                            output_final_state)
    if check_inputs and (bad := check_values("fused_recurrent_gla", q, *_checked(q, k, v, g))):
        *kv, g = bad.inputs
        k, v = kv if len(kv) == 2 else (k, *kv)
        return bad.poison(*fused_recurrent_gla(q, k, v, g, scale, initial_state, output_final_state,
                                               check_inputs=False))
    if use_fla(q):
        return fla_gla("recurrent", q, k, v, g, scale, initial_state, output_final_state)
    scale = K**-0.5 if scale is None else scale
    qf, kf, vf, gf = q.float(), k.float(), v.float(), g.float()
    S = initial(initial_state, (B, k.shape[2], K, v.shape[-1]), q)
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
    *,
    check_inputs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise-parallel GLA: o [B, T, Hq, V] (v's dtype) and, if asked, the final state float32 [B, Hk, K, V].

    Contract (module docstring): g <= 0, else ValueError; a NaN/inf input reaches no earlier output; T = 0
    gives an empty o. `check_inputs=False` skips the value check (one reduction per checked input, one host
    sync).

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
    On CPU with float32 q, k, v, g and no gradient to record (inference, prefill), a C++ forward runs instead
    (liger/ops/csrc/chunk_gla.cpp: the same float32 route, fused per chunk, ~2-4x faster), built on first use;
    this PyTorch form stays the autograd path and the fallback (no compiler, LIGER_NO_EXTENSIONS=1, a span
    beyond FLOAT32_SPAN). `last_chunk_gla_path()` says which ran.
    """
    G = check_gla_inputs(q, k, v, g, initial_state)
    B, T, _, K = q.shape
    if T == 0:
        return empty_result((B, 0, q.shape[2], v.shape[-1]), v, initial_state, (B, k.shape[2], K, v.shape[-1]),
                            output_final_state)
    if check_inputs and (bad := check_values("chunk_gla", q, *_checked(q, k, v, g))):
        *kv, g = bad.inputs
        k, v = kv if len(kv) == 2 else (k, *kv)
        return bad.poison(*chunk_gla(q, k, v, g, scale, initial_state, output_final_state, chunk_size,
                                     check_inputs=False))
    if use_fla(q):
        _ran("fla")
        return fla_gla("chunk", q, k, v, g, scale, initial_state, output_final_state)
    Hk, V = k.shape[2], v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    C = gated_chunk_len(T, chunk_size)
    if _native_applies(q, k, v, g, initial_state) and (ext := native_gla()) is not None:
        o, S, ok = ext.chunk_gla_fwd(*(x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v, g)),
                                     float(scale), initial_state, C, FLOAT32_SPAN, float(GATE_FLOOR))
        if ok:  # else a within-chunk decay span beyond FLOAT32_SPAN: the float64 route below
            _ran("native")
            return o, (S if output_final_state else None)
    _ran("torch")

    # b: the within-chunk cumulative log decay [B, Hk, N, C, K], r its value at the chunk's midpoint. In float32
    # first; when some |b - r| exceeds FLOAT32_SPAN, everything inside the chunks is redone in float64.
    gc = chunk_view(g.float(), C).clamp(min=-GATE_FLOOR)
    N = gc.shape[2]
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
    q_r = (chunk_view(q.float(), C, G).to(inner) * E).reshape(B, Hk, N, G * C, K)
    # k_s exp(r - b_s): not k / E, whose gradient holds 1 / E^2 (overflows)
    k_r = chunk_view(k.float(), C).to(inner) * (-d).exp()
    vc = to_chunks(v, C)  # float32 [B, Hk, N, C, V]

    # Between chunks: the state entering chunk n, S_n, reaches query t as q_t exp(b_t) S_n
    # = q_r,t (exp(r) * S_n): in float32 the factor exp(r) <= 1 goes on the [K, V] states, not every query.
    b_last = b[..., -1:, :]
    k_out = (k_r * torch.exp(b_last - r)).float()  # k_s exp(b_C - b_s)
    U = torch.matmul(k_out.transpose(-1, -2), vc)  # [B, Hk, N, K, V]
    chunk_decay = b_last.exp().float().transpose(-1, -2)  # [B, Hk, N, K, 1]
    S = initial(initial_state, (B, Hk, K, V), q)
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

    o = from_chunks(o.view(B, Hk, N, G, C, V), T)
    return o.to(v.dtype), (S if output_final_state else None)
