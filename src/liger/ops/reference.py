"""Slow, obviously-correct references for the ops, used by the tests only.

Float64, one token (and one query head) at a time, grouped-query heads expanded by copying. Same layouts and
conventions as the fast ops (see liger.ops.gla and liger.ops.window).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _expand_heads(x: Tensor, n: int) -> Tensor:
    return x.repeat_interleave(n // x.shape[2], dim=2)


def naive_recurrent_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t; o_t = scale q_t S_t, per query head, in float64."""
    B, T, Hq, K = q.shape
    Hk, V = k.shape[2], v.shape[-1]
    G = Hq // Hk
    scale = K**-0.5 if scale is None else scale
    q, k, v, g = (x.double() for x in (q, k, v, g))
    k, v, g = (_expand_heads(x, Hq) for x in (k, v, g))
    o = torch.zeros(B, T, Hq, V, dtype=torch.float64, device=q.device)
    states = []
    for h in range(Hq):
        if initial_state is None:
            S = torch.zeros(B, K, V, dtype=torch.float64, device=q.device)
        else:
            S = initial_state[:, h // G].double()
        for t in range(T):
            S = torch.exp(g[:, t, h])[:, :, None] * S + k[:, t, h][:, :, None] * v[:, t, h][:, None, :]
            o[:, t, h] = scale * torch.einsum("bk,bkv->bv", q[:, t, h], S)
        states.append(S)
    final = torch.stack(states[::G], 1) if output_final_state else None  # the G copies of a group are equal
    return o, final


def naive_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    scale: float | None = None,
    key_valid: Tensor | None = None,
    softcap: float | None = None,
) -> Tensor:
    """Causal softmax attention where the last Tq of the Tk keys' positions are the queries' positions, and
    query i (absolute position p = Tk - Tq + i) sees the valid keys at positions p - window + 1 .. p.

    q: [B, Tq, Hq, D]; k, v: [B, Tk, Hk, D]; key_valid: bool [B, Tk] or None. A query with no valid key gets 0.
    """
    B, Tq, Hq, D = q.shape
    Tk = k.shape[1]
    scale = D**-0.5 if scale is None else scale
    q, k, v = q.double(), _expand_heads(k.double(), Hq), _expand_heads(v.double(), Hq)
    if key_valid is None:
        key_valid = torch.ones(B, Tk, dtype=torch.bool, device=q.device)
    o = torch.zeros(B, Tq, Hq, v.shape[-1], dtype=torch.float64, device=q.device)
    for b in range(B):
        for i in range(Tq):
            p = Tk - Tq + i
            idx = [j for j in range(max(0, p - window + 1), p + 1) if key_valid[b, j]]
            if not idx:
                continue
            s = torch.einsum("hd,jhd->hj", q[b, i], k[b, idx]) * scale
            if softcap:
                s = softcap * torch.tanh(s / softcap)
            o[b, i] = torch.einsum("hj,jhd->hd", torch.softmax(s, -1), v[b, idx])
    return o
