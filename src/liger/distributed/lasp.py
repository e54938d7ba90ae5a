"""LASP-2 sequence parallelism for the linear recurrences, on plain torch.distributed (gloo or nccl).

Each rank of a process group holds one contiguous slice of every sequence, rank 0 first: time-first
[B, T_r, H, D], with slices that may differ in length (`lengths`, known to every rank). B and the head
sizes are the same on every rank.

Every recurrence here has a final state affine in its initial state: on rank r's slice,
S_out = A_r(S_in) + S_r, with S_r the final state from a zero state and A_r the slice's transition
(GLA: diag(exp(D_r)) with D_r = sum_t g_t, a decay on the key axis; GSA's slot pass: the same on the value
axis; the gated delta rule: a full [K, K] matrix prod_t exp(g_t)(I - beta_t k_t^T k_t)). So the state
entering rank r is a fixed-size function of the slices before it::

    S_in(r) = A_{r-1}( ... A_1(A_0(S_0) + S'_0) ... ) + S'_{r-1}      (S'_j: rank j's S_r; S_0: optional)

On every rank (`lasp2_states`): run the chunked op on the slice from a zero state; all-gather (S_r, A_r)
packed in one float32 tensor: ONE collective per recurrence and layer whose size does not depend on the
sequence length; combine the earlier ranks' pairs into S_in(r); add S_in(r)'s contribution to the outputs.
For GLA that is o_t += scale * (q_t * exp(b_t)) S_in(r), b_t the cumulative log decay from the slice start
(`chunk_gla_sp`: one [T_r, K] x [K, V] matmul per head, half the work of a second pass); for the delta rule
a second pass from S_in(r) with zero values (`chunk_gated_delta_rule_sp`). GSA is two such recurrences with
a per-token softmax between them (`chunk_gsa_sp`: two all-gathers).

Token-local context comes as a halo: `preceding_tokens` (liger.distributed.collectives) all-gathers every rank's last n tokens (fixed
size) and assembles the n before this rank's slice from the earlier ranks (several of them when slices are
short). The window branch takes its `window - 1` (RoPE'd) keys, values and validity flags this way
(`window_halo`, passed to the window op as `past`); LAWCAT's short convolution its last inputs.

All collectives are differentiable (`all_gather_differentiable`: all-gather forward, reduce-scatter
backward), and every rank builds the same autograd graph (rank 0 multiplies the gathered tensors by zero
weights rather than skipping them), so the backward collectives match across ranks.

Inside a model, `liger.distributed.context.sequence_parallel(lengths, group)` makes the mixers use these
ops through `current()`. The caller feeds each rank its slice with global position ids
(`liger.distributed.sequence.sequence_parallel_forward` does all of this). Supported: every linear
mixer (gla, hgrn2, simple_gla, retention, gsa, gated_deltanet, lolcats, lawcat) with or without the window
branch, no cache. Layers kept as softmax attention gather every key and value instead
(`liger.distributed.softmax_layers`, which reads `valid`, the whole sequences' padding mask). Not supported:
generation caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Callable

import torch
import torch.distributed as dist

from ..ops import GATE_FLOOR, GSAState, chunk_gated_delta_rule, chunk_gla, chunk_value_gated_gla, float32_op, gsa_passes
from .collectives import all_gather_differentiable, preceding_tokens

Tensor = torch.Tensor


def lasp2_states(
    S_local: Tensor,
    A_local: Tensor,
    apply: Callable[[Tensor, Tensor], Tensor],
    initial_state: Tensor | None,
    output_final_state: bool,
    group=None,
) -> tuple[Tensor, Tensor | None]:
    """The LASP-2 exchange for a recurrence whose final state is affine in its initial state:
    S_out = A_r(S_in) + S_r on rank r, with S_r its final state from a zero state and A_r its transition.

    S_local float32 [B, H, K, V]; A_local float32 [B, H, ...] (any shape, the same on every rank);
    apply(A, S) -> A applied to a state S. ONE all-gather of both, packed. Returns S_in (the state entering
    this rank's slice, float32 [B, H, K, V]) and, if asked, the final state of the whole sequence (on every
    rank). initial_state: the state before the whole sequence (the same on every rank) or None."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    n = S_local[0, 0].numel()
    packed = torch.cat([S_local.float().flatten(2), A_local.float().flatten(2)], -1)  # [B, H, n + |A|]
    gathered = all_gather_differentiable(packed, group)  # [P, B, H, n + |A|]
    S_all = gathered[..., :n].view(world, *S_local.shape)
    A_all = gathered[..., n:].view(world, *A_local.shape)
    S_in = _combine(S_all, A_all, apply, rank, initial_state)
    final = _combine(S_all, A_all, apply, world, initial_state) if output_final_state else None
    return S_in, final


def _combine(S: Tensor, A: Tensor, apply: Callable, upto: int, S0: Tensor | None) -> Tensor:
    """The state after the slices of ranks 0..upto-1, from S0 (or zeros): S <- A_j(S) + S_j in rank order.
    S [P, B, H, K, V], A [P, ...]. Ranks j >= upto enter with weight zero (not skipped), so every rank's
    graph holds the gathered tensors and runs the backward collective. Transitions are contractions here
    (decays <= 1; I - beta k^T k with unit k and beta in [0, 2]): no overflow."""
    state = torch.zeros_like(S[0]) if S0 is None else S0.float()
    for j in range(S.shape[0]):
        w = 1.0 if j < upto else 0.0
        state = state + w * (apply(A[j], state) + S[j] - state)
    return state


def _decay_keys(A: Tensor, S: Tensor) -> Tensor:
    return A.unsqueeze(-1) * S  # diag(A) S: decay on the key axis (GLA)


def _decay_values(A: Tensor, S: Tensor) -> Tensor:
    return A.unsqueeze(-2) * S  # S diag(A): decay on the value axis (GSA's slot pass)


DECAY_CUTOFF = 50.0  # cumulative log decays below -DECAY_CUTOFF enter as exactly zero (see _decay)


def _decay(b: Tensor) -> Tensor:
    """exp(b) for cumulative log decays b <= 0, with weights below e^-50 (2e-22) set to zero: left in, they
    make float32 subnormals in the products with the states, which x86 CPUs compute 10-100x slower (this made
    every rank after the first 2x slower in a 2-rank step), and they change nothing a float32 sum can hold."""
    return torch.where(b > -DECAY_CUTOFF, b.exp(), torch.zeros((), dtype=b.dtype, device=b.device))


def _gated_sp(op: Callable, on_keys: bool, q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float | None,
              initial_state: Tensor | None, output_final_state: bool, group) -> tuple[Tensor, Tensor | None]:
    """LASP-2 for a diagonally gated recurrence `op` (decay on the key axis, or on the value axis)."""
    B, T, Hq, K = q.shape
    Hk, V = k.shape[2], v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    if T == 0:
        raise ValueError("every rank needs at least one token of the sequence")
    o, S_local = op(q, k, v, g, scale=scale, output_final_state=True)
    # the ops floor the per-step log decay at -GATE_FLOOR (a change below e^-21); do the same here
    b = g.float().clamp(min=-GATE_FLOOR).cumsum(1)  # [B, T, Hk, K or V]
    apply = _decay_keys if on_keys else _decay_values
    S_in, final = lasp2_states(S_local, _decay(b[:, -1]), apply, initial_state, output_final_state, group)
    qg, decay = q.float().view(B, T, Hk, Hq // Hk, K), _decay(b).unsqueeze(3)
    if on_keys:  # o_t += scale * (q_t * exp(b_t)) S_in
        corr = torch.einsum("bthgk,bhkv->bthgv", qg * decay, S_in)
    else:  # o_t += scale * (q_t S_in) * exp(b_t)
        corr = torch.einsum("bthgk,bhkv->bthgv", qg, S_in) * decay
    return (o.float() + scale * corr.reshape(B, T, Hq, V)).to(v.dtype), final


@float32_op
def chunk_gla_sp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    group=None,
) -> tuple[Tensor, Tensor | None]:
    """`chunk_gla` of a sequence split over the ranks of `group` (LASP-2, see the module docstring).

    q [B, T_r, Hq, K], k [B, T_r, Hk, K], v [B, T_r, Hk, V], g [B, T_r, Hk, K] (log decay <= 0): this rank's
    slice (T_r >= 1; slices may differ in length). initial_state: float32 [B, Hk, K, V], the state before the
    whole sequence (the same on every rank), or None. Returns this rank's outputs [B, T_r, Hq, V] (v's dtype)
    and, if asked, the final state of the whole sequence (float32 [B, Hk, K, V], on every rank).
    One all-gather of B * Hk * K * (V + 1) float32 values per call."""
    return _gated_sp(chunk_gla, True, q, k, v, g, scale, initial_state, output_final_state, group)


def chunk_simple_gla_sp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    group=None,
) -> tuple[Tensor, Tensor | None]:
    """`chunk_simple_gla` (one log decay per head and token, g [B, T_r, Hk]) of a sequence split over the ranks
    of `group`: `chunk_gla_sp` with the head's decay on every key channel (the same recurrence)."""
    return chunk_gla_sp(q, k, v, g.unsqueeze(-1).expand_as(k), scale, initial_state, output_final_state, group)


@float32_op
def chunk_value_gated_gla_sp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    group=None,
) -> tuple[Tensor, Tensor | None]:
    """`chunk_value_gated_gla` (decay on the value axis: GSA's slot pass) of a sequence split over the
    ranks of `group`; shapes as that op (g [B, T_r, Hk, V]), on this rank's slice. One all-gather of
    B * Hk * (K + 1) * V float32 values."""
    return _gated_sp(chunk_value_gated_gla, False, q, k, v, g, scale, initial_state, output_final_state, group)


@float32_op
def chunk_gsa_sp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: GSAState | None = None,
    output_final_state: bool = False,
    group=None,
) -> tuple[Tensor, GSAState | None]:
    """`chunk_gsa` of a sequence split over the ranks of `group`: both of its passes are gated linear
    recurrences (the softmax between them is per token), so each runs LASP-2: two all-gathers."""
    return gsa_passes(partial(chunk_value_gated_gla_sp, group=group), partial(chunk_gla_sp, group=group),
                      q, k, v, s, g, scale, initial_state, output_final_state)


@float32_op
def chunk_gated_delta_rule_sp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    group=None,
) -> tuple[Tensor, Tensor | None]:
    """`chunk_gated_delta_rule` of a sequence split over the ranks of `group` (shapes as that op, on this
    rank's slice; keys already unit vectors).

    The delta rule's transition A_r = prod_t exp(g_t) (I - beta_t k_t^T k_t) is a full [K, K] matrix, not a
    decay: each rank computes it as the final state of its slice from the identity with zero values, the
    all-gather carries (S_r, A_r) (B * Hk * K * (V + K) float32 values), and the entering state's
    contribution to the outputs is a second pass from S_in with zero values (the rule is linear in the state
    and the values jointly). Three passes of the chunked op per call."""
    B, T, Hq, K = q.shape
    Hk = k.shape[2]
    if T == 0:
        raise ValueError("every rank needs at least one token of the sequence")
    o, S_local = chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, output_final_state=True)
    eye = torch.eye(K, device=q.device).expand(B, Hk, K, K)
    zeros_k = torch.zeros(B, T, Hk, K, device=q.device)
    _, A_local = chunk_gated_delta_rule(q, k, zeros_k, g, beta, scale=scale, initial_state=eye,
                                       output_final_state=True)
    S_in, final = lasp2_states(S_local, A_local, torch.matmul, initial_state, output_final_state, group)
    o_in, _ = chunk_gated_delta_rule(q, k, torch.zeros_like(v, dtype=torch.float32), g, beta, scale=scale,
                                     initial_state=S_in)
    return (o.float() + o_in.float()).to(v.dtype), final


def window_halo(
    k: Tensor,
    v: Tensor,
    key_valid: Tensor | None,
    window: int,
    lengths: Sequence[int],
    group=None,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """The `window - 1` keys, values and validity flags that precede this rank's slice, as `past` for
    `window_attention`: (k [B, L, Hk, Dk], v [B, L, Hk, Dv] in float32, valid bool [B, L]), L = window - 1
    (invalid zeros where the sequence has fewer tokens before the slice); None when window <= 1.

    k [B, T_r, Hk, Dk] (after RoPE, at global positions), v [B, T_r, Hk, Dv], key_valid bool [B, T_r] or
    None; lengths: every rank's slice length. One all-gather of B * L * Hk * (Dk + Dv + 1) float32 values;
    differentiable with respect to k and v."""
    L = window - 1
    if L <= 0:
        return None
    B, T, Hk, Dk = k.shape
    Dv = v.shape[-1]
    valid = torch.ones(B, T, dtype=torch.bool, device=k.device) if key_valid is None else key_valid.bool()
    flag = valid.float()[:, :, None, None].expand(B, T, Hk, 1)
    mine = torch.cat([k.float(), v.float(), flag], -1).flatten(2)  # [B, T, Hk * (Dk + Dv + 1)]
    halo = preceding_tokens(mine, L, lengths, group).view(B, L, Hk, Dk + Dv + 1)
    halo_valid = halo[:, :, 0, -1] > 0.5  # absent slots are zeros: invalid
    return halo[..., :Dk], halo[..., Dk : Dk + Dv], halo_valid
