"""The slow, obviously-correct float64 reference of sliding-window attention (liger.ops.window), for the
tests: one query at a time, grouped-query heads expanded by copying; same layout and conventions as the op.
"""

from __future__ import annotations

import torch

from .common import per_query_head

Tensor = torch.Tensor


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
    _, (q, k, v) = per_query_head(q, k, v)
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
