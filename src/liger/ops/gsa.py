"""Gated Slot Attention (GSA; Zhang et al. 2024, arXiv 2409.07146) and the value-gated GLA it is built on.

GSA keeps M memory slots per head, written with weights s_t [M] and forgotten with slot gates
a_t = exp(g_t) [M] (natural-log g <= 0; usually s = 1 - exp(g))::

    hk_t = hk_{t-1} diag(a_t) + k_t^T s_t         hk: [K, M]  (the paper's K~_t, transposed)
    hv_t = diag(a_t) hv_{t-1} + s_t^T v_t         hv: [M, V]  (the paper's V~_t)
    o_t  = softmax(scale * q_t hk_t) hv_t         softmax over the M slots

i.e. two gated linear-attention passes with a softmax between them: the first decays its state along the
value (slot) axis (`chunk_value_gated_gla`), the second is ordinary GLA with query softmax(...), key s and
the gate on the key (slot) axis (`liger.ops.gla.chunk_gla`, scale 1).

Layout time-first: q [B, T, Hq, K], k [B, T, Hk, K], v [B, T, Hk, V], s and g [B, T, Hk, M]; the state is
the pair (hk float32 [B, Hk, K, M], hv float32 [B, Hk, M, V]). Grouped-query heads: Hq = G * Hk, query head
h reads head h // G. Any float dtype in; float32 arithmetic (float64 inside chunks); o in v's dtype.

Input contract (every op here; as `liger.ops.gla`'s): g <= 0, else ValueError naming the op, the input, the
value and its index; s any values; a NaN/inf in any input reaches no earlier output (v, g and GSA's s are
checked: a non-finite value there, -inf gates included, makes NaN every output of its head from its position
on and the final state(s); see `liger.ops.common.check_values`); T = 0 gives an empty o and the initial
state(s). `check_inputs=False` skips the value check (one reduction per checked input, one host sync); GSA
checks once and runs its two passes unchecked.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from .common import (causal_mask, check_qkv, check_shape, check_values, empty_result, float32_op, from_chunks, prepare,
                     recurrent_outputs, scan_chunks, to_chunks)
from .gla import GATE_FLOOR, chunk_gla, fused_recurrent_gla, gated_chunk_len

Tensor = torch.Tensor
GSAState = tuple[Tensor, Tensor]


def _value_gated_checked(name: str, op: Callable, q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float | None,
                         initial_state: Tensor | None, output_final_state: bool, check_inputs: bool, **kw):
    """The input contract of the value-gated GLA ops: shapes, T = 0, then the value check; None when `op`
    should run."""
    check_qkv(q, k, v, initial_state)
    check_shape("g", g, v.shape)
    B, T, Hq, K = q.shape
    if T == 0:
        return empty_result((B, 0, Hq, v.shape[-1]), v, initial_state, (B, k.shape[2], K, v.shape[-1]),
                            output_final_state)
    if check_inputs and (bad := check_values(name, q, {"v": v}, {"g": g})):
        v, g = bad.inputs
        return bad.poison(*op(q, k, v, g, scale, initial_state, output_final_state, check_inputs=False, **kw))
    return None


@float32_op
def fused_recurrent_value_gated_gla(
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
    """Token-by-token value-gated GLA (decode path): S_t = S_{t-1} diag(exp(g_t)) + k_t^T v_t,
    o_t = scale q_t S_t, with g [B, T, Hk, V]. Same signature, input contract and result as
    `chunk_value_gated_gla`."""
    done = _value_gated_checked("fused_recurrent_value_gated_gla", fused_recurrent_value_gated_gla, q, k, v, g,
                                scale, initial_state, output_final_state, check_inputs)
    if done is not None:
        return done
    _, scale, S = prepare(q, k, v, scale, initial_state)
    kf, vf, decay = k.float(), v.float(), g.float().exp()

    def step(S: Tensor, t: int) -> Tensor:
        return S * decay[:, t, :, None, :] + kf[:, t, :, :, None] * vf[:, t, :, None, :]

    o, S = recurrent_outputs(q.float(), S, step)
    return (o * scale).to(v.dtype), (S if output_final_state else None)


@float32_op
def chunk_value_gated_gla(
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
    """Chunkwise-parallel GLA with the decay on the value axis: S_t = S_{t-1} diag(exp(g_t)) + k_t^T v_t,
    o_t = scale q_t S_t. q [B, T, Hq, K], k [B, T, Hk, K], v and g [B, T, Hk, V]; state float32
    [B, Hk, K, V]; returns o [B, T, Hq, V] in v's dtype and, if asked, the final state. Input contract: the
    module docstring's.

    The mirror image of `chunk_gla`: inside a chunk o_t = exp(b_t - r) * sum_{s<=t} (q_t.k_s) v_s exp(r - b_s),
    one float64 [C, C] @ [C, V] matmul per chunk, with b the within-chunk cumulative log decay and r its value
    at the chunk's midpoint. Gates are floored at -GATE_FLOOR per step here, so |b - r| <= C/2 * GATE_FLOOR
    stays within float64's range, in the forward and the backward pass (the floor only touches weights below
    e^-21). Between chunks every exponent is <= 0 (exp(b_t) on the way out of a state, exp(b_C - b_s) into
    it) and a scan carries the states.
    """
    done = _value_gated_checked("chunk_value_gated_gla", chunk_value_gated_gla, q, k, v, g, scale, initial_state,
                                output_final_state, check_inputs, chunk_size=chunk_size)
    if done is not None:
        return done
    G, scale, S0 = prepare(q, k, v, scale, initial_state)
    T = q.shape[1]
    C = gated_chunk_len(T, chunk_size)
    qc = to_chunks(q, C, groups=G)  # [B, Hk, N, G, C, K]
    kc = to_chunks(k, C)  # [B, Hk, N, C, K]
    vc = to_chunks(v, C, torch.float64)  # [B, Hk, N, C, V]
    b = to_chunks(g, C, torch.float64).clamp(min=-GATE_FLOOR).cumsum(-2)
    r = b[..., C // 2 - 1 : C // 2, :]  # [B, Hk, N, 1, V]
    # Two exps over all tokens. exp(r - b) is its own exp, not 1 / exp(b - r): the gradient of a division by
    # E would hold 1 / E^2, which overflows float64 once |b - r| > 354.
    E, E_inv = torch.exp(b - r), torch.exp(r - b)
    v_r = vc * E_inv  # v_s exp(r - b_s)

    # Inside chunks.
    A = torch.matmul(qc, kc.unsqueeze(3).transpose(-1, -2))  # [B, Hk, N, G, C, C]
    A = A.masked_fill(~causal_mask(C, q.device), 0.0).double()
    o = (E.unsqueeze(3) * torch.matmul(A, v_r.unsqueeze(3))).float()  # [B, Hk, N, G, C, V]

    # Between chunks.
    U = torch.matmul(kc.transpose(-1, -2), (v_r * torch.exp(b[..., -1:, :] - r)).float())  # [B, Hk, N, K, V]
    S_in, S = scan_chunks(U, b[..., -1:, :].exp().float(), S0)
    o = o + torch.matmul(qc.flatten(3, 4), S_in).view(o.shape) * (E * r.exp()).float().unsqueeze(3)
    return from_chunks(o * scale, T).to(v.dtype), (S if output_final_state else None)


def _check_gsa(
    q: Tensor, k: Tensor, v: Tensor, s: Tensor, g: Tensor | None, initial_state: GSAState | None
) -> tuple[Tensor | None, Tensor | None]:
    """Validate; return the two initial states (or Nones)."""
    check_qkv(q, k, v)
    if g is None:
        raise ValueError("g (the slot gates, natural log [B, T, H, M]) is required")
    B, T, Hk, K = k.shape
    M, V = s.shape[-1], v.shape[-1]
    check_shape("s", s, (B, T, Hk, M))
    check_shape("g", g, (B, T, Hk, M))
    hk0, hv0 = (None, None) if initial_state is None else initial_state
    check_shape("initial_state[0] (hk)", hk0, (B, Hk, K, M))
    check_shape("initial_state[1] (hv)", hv0, (B, Hk, M, V))
    return hk0, hv0


def gsa_passes(slot_pass: Callable, value_pass: Callable, q: Tensor, k: Tensor, v: Tensor, s: Tensor, g: Tensor,
         scale: float | None, initial_state: GSAState | None, output_final_state: bool
         ) -> tuple[Tensor, GSAState | None]:
    """Both passes of GSA with the given ops (chunked or recurrent)."""
    hk0, hv0 = _check_gsa(q, k, v, s, g, initial_state)
    ok, hk = slot_pass(q, k, s.float(), g, scale, hk0, output_final_state)  # float32 [B, T, Hq, M]
    o, hv = value_pass(ok.softmax(-1), s, v, g, 1.0, hv0, output_final_state)
    return o, ((hk, hv) if output_final_state else None)


def _gsa(name: str, slot_pass: Callable, value_pass: Callable, q: Tensor, k: Tensor, v: Tensor, s: Tensor,
         g: Tensor, scale: float | None, initial_state: GSAState | None, output_final_state: bool,
         check_inputs: bool) -> tuple[Tensor, GSAState | None]:
    """GSA's input contract (shapes, T = 0, the value check once), then both passes unchecked."""
    _check_gsa(q, k, v, s, g, initial_state)
    B, T, Hq, K = q.shape
    Hk, M, V = k.shape[2], s.shape[-1], v.shape[-1]
    if T == 0:
        return empty_result((B, 0, Hq, V), v, initial_state, ((B, Hk, K, M), (B, Hk, M, V)), output_final_state)
    bad = check_values(name, q, {"v": v, "s": s}, {"g": g}) if check_inputs else None
    if bad is not None:
        v, s, g = bad.inputs
    o, state = gsa_passes(partial(slot_pass, check_inputs=False), partial(value_pass, check_inputs=False), q, k, v,
                          s, g, scale, initial_state, output_final_state)
    return (o, state) if bad is None else bad.poison(o, state)


@float32_op
def chunk_gsa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: GSAState | None = None,
    output_final_state: bool = False,
    *,
    check_inputs: bool = True,
) -> tuple[Tensor, GSAState | None]:
    """Chunkwise-parallel gated slot attention: o [B, T, Hq, V] (v's dtype) and, if asked, the final state
    (hk float32 [B, Hk, K, M], hv float32 [B, Hk, M, V]). s: slot write weights, g: slot log decays, both
    [B, T, Hk, M]. Two chunked passes (`chunk_value_gated_gla`, then `chunk_gla`), each stable for any
    g <= 0 and any T; the softmax between them is over slots, per token. Input contract: the module
    docstring's."""
    return _gsa("chunk_gsa", chunk_value_gated_gla, chunk_gla, q, k, v, s, g, scale, initial_state,
                output_final_state, check_inputs)


@float32_op
def fused_recurrent_gsa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: GSAState | None = None,
    output_final_state: bool = False,
    *,
    check_inputs: bool = True,
) -> tuple[Tensor, GSAState | None]:
    """Token-by-token gated slot attention (decode path); same signature, input contract and result as
    `chunk_gsa`."""
    return _gsa("fused_recurrent_gsa", fused_recurrent_value_gated_gla, fused_recurrent_gla, q, k, v, s, g, scale,
                initial_state, output_final_state, check_inputs)
