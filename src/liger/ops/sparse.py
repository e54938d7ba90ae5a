"""Sparse global attention: each query also attends to the M best-scored tokens that have left its window.

The sparse cache of a linearized layer (LigerConfig.sparse_cache) keeps, per sequence and key head, at most
M tokens' keys and values exactly, beside the sliding window and the recurrent state. Every token carries a
score (float32, per key head; the mixers use `novelty_scores`); the rule that fills the cache:

    the set seen by the query at position t is the M highest-scored valid tokens among those at positions
    <= t - window (the tokens that have left t's window), ties going to the later token.

Scores are fixed when a token is written, so the set only changes when a token leaves the window: it joins
if it beats the worst one kept, which is then dropped for good. That makes generation exact and bounded: the
cache holds the M kept tokens (`memory`) and the window's last `window - 1` tokens with their scores, and
`sparse_attention_parts` computes the same sets for a whole prefill (queries in blocks, each block's sets
from the memory at its start plus the tokens leaving the window inside it) as for one decode step.

Layout as liger.ops.window: time-first, q [B, T, Hq, D] and keys [B, T, Hk, D] after RoPE, grouped-query
heads (query head h reads key head h // G). float32 arithmetic. `sparse_naive.py` holds the float64
reference (one query at a time, the set by sorting).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .common import float32_op
from .simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

Tensor = torch.Tensor

NOVELTY_EPS = 1e-6
# Scores are rounded to this step: the chunked (prefill) and token-by-token (decode) computations differ by
# float rounding, and equal tokens (a repeated word's score is ~0) must tie exactly so that both paths keep the
# same ones (a tie goes to the later token).
SCORE_STEP = 1 / 256
BLOCK = 128  # queries per block of `sparse_attention_parts`: the candidates of a block are M + BLOCK tokens


class SparseMemory(NamedTuple):
    """The M kept tokens of each key head, best first: k [B, M, Hk, D], v [B, M, Hk, Dv], score float32
    [B, M, Hk] (-inf marks an empty slot) and pos int64 [B, M, Hk] (absolute position, for ties)."""

    k: Tensor
    v: Tensor
    score: Tensor
    pos: Tensor


def empty_memory(B: int, M: int, Hk: int, D: int, Dv: int, like: Tensor) -> SparseMemory:
    """A memory with M empty slots (zeros, score -inf), keys/values in `like`'s dtype and device."""
    return SparseMemory(like.new_zeros(B, M, Hk, D), like.new_zeros(B, M, Hk, Dv),
                        torch.full((B, M, Hk), float("-inf"), device=like.device),
                        torch.zeros(B, M, Hk, dtype=torch.long, device=like.device))


@float32_op
def novelty_scores(k: Tensor, v: Tensor, key_valid: Tensor | None = None, state: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
    """The sparse cache's token scores: how badly a parameter-free linear-attention memory of the tokens before
    each one reads its value back from its key (LoLA's rule, kept independent of the mixer so that every mixer
    scores alike). Per key head, with phi = softmax over the head dimension and no decay::

        r_t = phi(k_t) S_{t-1} / (phi(k_t) z_{t-1} + eps),  S_t = S_{t-1} + phi(k_t)^T v_t,  z_t = z_{t-1} + phi(k_t)
        score_t = ||v_t - r_t||^2 / (||v_t||^2 + eps)     (1 for the first token: nothing to read back)

    rounded to a multiple of SCORE_STEP (so prefill and decode rank tokens alike).

    k [B, T, Hk, D] (before RoPE), v [B, T, Hk, Dv]; key_valid bool [B, T] (padding neither writes nor gets a
    score: -inf); state: (S, z) as float32 [B, Hk, D, Dv + 1] from the tokens before (None: empty). Returns
    (score float32 [B, T, Hk], the state after the T tokens)."""
    B, T, Hk, Dv = v.shape
    initial = state
    ones = torch.ones(B, T, Hk, 1, device=k.device) if key_valid is None else \
        key_valid[:, :, None, None].float().expand(B, T, Hk, 1)
    phi = torch.softmax(k.float(), -1) * ones
    vv = torch.cat([v.float() * ones, ones], -1)
    no_decay = torch.zeros(Hk, device=k.device)
    # the read of token t from the memory before it: query phi_t one step early (position t - 1), the first
    # token's from the initial state directly
    q_next = torch.cat([phi[:, 1:], phi.new_zeros(B, 1, Hk, phi.shape[-1])], 1)
    op = fused_recurrent_simple_gla if T == 1 else chunk_simple_gla
    o, state = op(q_next, phi, vv, g_gamma=no_decay, scale=1.0, initial_state=state, output_final_state=True)
    first = phi.new_zeros(B, 1, Hk, Dv + 1) if initial is None else \
        torch.einsum("bhk,bhkv->bhv", phi[:, 0], initial.float())[:, None]
    o = torch.cat([first, o[:, :-1]], 1)
    r = o[..., :Dv] / (o[..., Dv:] + NOVELTY_EPS)
    vf = v.float()
    score = (vf - r).pow(2).sum(-1) / (vf.pow(2).sum(-1) + NOVELTY_EPS)
    score = torch.round(score / SCORE_STEP) * SCORE_STEP
    if key_valid is not None:
        score = score.masked_fill(~key_valid.bool()[..., None], float("-inf"))
    return score, state


def _beats(score_a: Tensor, pos_a: Tensor, score_b: Tensor, pos_b: Tensor) -> Tensor:
    """Whether a ranks above b: a higher score, or the same score and a later position (broadcasting)."""
    return (score_a > score_b) | ((score_a == score_b) & (pos_a > pos_b))


@float32_op
def sparse_attention_parts(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    score: Tensor,
    window: int,
    budget: int,
    *,
    scale: float,
    key_valid: Tensor | None = None,
    past: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    memory: SparseMemory | None = None,
    start: int = 0,
    softcap: float | None = None,
    block_size: int = BLOCK,
) -> tuple[Tensor, Tensor, Tensor, SparseMemory, Tensor]:
    """Unnormalised attention of the T new queries over their sparse sets (module docstring).

    q [B, T, Hq, D], k [B, T, Hk, D] (after RoPE), v [B, T, Hk, Dv], score float32 [B, T, Hk] (the new
    tokens'); key_valid bool [B, T] (False: padding, never kept); past: the window's last `window - 1` tokens
    before these, (k, v, valid, score) [B, window - 1, ...] oldest first, or None at the start of a sequence;
    memory: the kept tokens before these (None: empty); start: the absolute position of the first new token.

    Returns (num [B, T, Hq, Dv], den [B, T, Hq, 1], m [B, T, Hq, 1], memory after the T tokens, the scores of the
    window's last `window - 1` tokens [B, window - 1, Hk]): num = sum_s exp(s_ts - m_t) v_s and
    den = sum_s exp(s_ts - m_t) over the set of query t, m_t the largest score in it (-inf for an empty set,
    whose num and den are 0). The caller merges them with the window's parts (`merge_parts`).
    """
    if window < 1 or budget < 1:
        raise ValueError(f"the sparse cache needs window >= 1 and budget >= 1, got {window} and {budget}")
    B, T, Hq, D = q.shape
    Hk, Dv = k.shape[2], v.shape[-1]
    G = Hq // Hk
    L = window - 1
    dev = q.device
    valid = torch.ones(B, T, dtype=torch.bool, device=dev) if key_valid is None else key_valid.bool()
    if past is None:
        past = (k.new_zeros(B, L, Hk, D), v.new_zeros(B, L, Hk, Dv), torch.zeros(B, L, dtype=torch.bool, device=dev),
                torch.full((B, L, Hk), float("-inf"), device=dev))
    pk, pv, pvalid, pscore = past
    if pk.shape[1] != L:
        raise ValueError(f"past holds {pk.shape[1]} tokens; the sparse cache needs exactly window - 1 = {L}")
    if memory is None:
        memory = empty_memory(B, budget, Hk, D, Dv, k)
    if T == 0:
        empty = q.new_zeros(B, 0, Hq, 1, dtype=torch.float32)
        return q.new_zeros(B, 0, Hq, Dv, dtype=torch.float32), empty, empty, memory, pscore
    # The stream: the window's past then the new tokens; element s (position start - L + s) becomes visible to
    # query i once it has left i's window, i.e. for s < i.
    sk = torch.cat([pk.to(k.dtype), k], 1).float()
    sv = torch.cat([pv.to(v.dtype), v], 1).float()
    svalid = torch.cat([pvalid.bool(), valid], 1)
    sscore = torch.cat([pscore.float(), score.float()], 1)
    sscore = torch.where(svalid[..., None] & ~sscore.isnan(), sscore, torch.full_like(sscore, float("-inf")))
    spos = (torch.arange(L + T, device=dev) + (start - L))[None, :, None].expand(B, L + T, Hk)
    mk, mv, mscore, mpos = memory.k.float(), memory.v.float(), memory.score.float(), memory.pos

    P = max(1, min(block_size, T))
    nums, dens, maxes = [], [], []
    j = torch.arange(P, device=dev)
    for b0 in range(0, T, P):
        n = min(P, T - b0)
        # candidates: the memory (M) and the stream elements b0 .. b0 + n - 1 (the last joins only the next memory)
        ek, ev, escore, epos = (x[:, b0:b0 + n] for x in (sk, sv, sscore, spos))
        ck, cv = torch.cat([mk, ek], 1), torch.cat([mv, ev], 1)  # [B, C, Hk, *]
        cscore, cpos = torch.cat([mscore, escore], 1), torch.cat([mpos, epos], 1)  # [B, C, Hk]
        present = cscore > float("-inf")  # a kept or valid token (empty slots and padding are -inf)
        E = ek.shape[1]
        # beats[c', c]: candidate c' ranks above c and is present, [B, Hk, C', C]
        beats = _beats(cscore.transpose(1, 2)[..., :, None], cpos.transpose(1, 2)[..., :, None],
                       cscore.transpose(1, 2)[..., None, :], cpos.transpose(1, 2)[..., None, :])
        beats = beats & present.transpose(1, 2)[..., :, None]
        M = mk.shape[1]
        above_mem = beats[:, :, :M].sum(2)  # [B, Hk, C]
        # stream element e is visible to block query j when e < j: count those above c, exclusive cumsum
        above_new = F.pad(beats[:, :, M:].int().cumsum(2), (0, 0, 1, 0))  # [B, Hk, E + 1, C]
        upto = above_new[:, :, j[:n]]  # [B, Hk, n, C]: the elements e < j that rank above c
        visible = torch.cat([present[:, :M].transpose(1, 2)[:, :, None, :].expand(B, Hk, n, M),
                             (present[:, M:].transpose(1, 2)[:, :, None, :]
                              & (torch.arange(E, device=dev)[None, :] < j[:n, None])[None, None])], 3)
        member = visible & (above_mem[:, :, None, :] + upto < budget)  # [B, Hk, n, C]
        qb = q[:, b0:b0 + n].float().view(B, n, Hk, G, D)
        s = torch.einsum("bnhgd,bchd->bhgnc", qb, ck) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(~member[:, :, None], float("-inf"))
        m = s.amax(-1, keepdim=True)
        has = torch.isfinite(m)
        m = torch.where(has, m, torch.zeros_like(m)).detach()
        p = torch.exp(s - m)
        nums.append(torch.einsum("bhgnc,bchd->bnhgd", p, cv).reshape(B, n, Hq, Dv))
        dens.append(p.sum(-1).permute(0, 3, 1, 2).reshape(B, n, Hq, 1))
        m = torch.where(has, m, torch.full_like(m, float("-inf")))  # an empty set: no weight when merged
        maxes.append(m[..., 0].permute(0, 3, 1, 2).reshape(B, n, Hq, 1))
        # the memory for the next block: the best M of every candidate (all E elements have now left the window)
        rank = above_mem + above_new[:, :, E]  # [B, Hk, C]
        keep = present.transpose(1, 2) & (rank < budget)
        slot = torch.where(keep, rank, torch.full_like(rank, M)).transpose(1, 2)  # [B, C, Hk], M = drop
        mk, mv = _scatter(slot, ck, M), _scatter(slot, cv, M)
        mscore = _scatter(slot, cscore[..., None], M, fill=float("-inf"))[..., 0]
        mpos = _scatter(slot, cpos[..., None], M)[..., 0]
    memory = SparseMemory(mk.to(memory.k.dtype), mv.to(memory.v.dtype), mscore, mpos)
    ring_score = sscore[:, T:]
    return torch.cat(nums, 1), torch.cat(dens, 1), torch.cat(maxes, 1), memory, ring_score


def _scatter(slot: Tensor, x: Tensor, M: int, fill: float = 0.0) -> Tensor:
    """x [B, C, Hk, F] placed at `slot` [B, C, Hk] of M slots (slot M: dropped): [B, M, Hk, F]."""
    B, C, Hk, Fd = x.shape
    out = x.new_full((B, M + 1, Hk, Fd), fill)
    out = out.scatter(1, slot[..., None].expand(B, C, Hk, Fd), x)
    return out[:, :M]


def merge_parts(*parts: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """One softmax over the union of disjoint key sets, from each set's (num, den, m) [B, T, Hq, *] (as
    `sparse_attention_parts` and `window_attention_parts(..., with_max=True)` return them; a set with den 0
    is empty whatever its m): (num, den, m) relative to the largest m of the non-empty sets (0 if none)."""
    ms = [torch.where(p[1] > 0, p[2], torch.full_like(p[2], float("-inf"))) for p in parts]
    m = torch.stack(ms).amax(0)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = [torch.exp(mi - m) for mi in ms]
    num = sum(p[0] * wi for p, wi in zip(parts, w))
    den = sum(p[1] * wi for p, wi in zip(parts, w))
    return num, den, m
