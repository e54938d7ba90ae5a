"""The slow, obviously-correct float64 reference of GLA (liger.ops.gla), for the tests: one token and one
query head at a time, grouped-query heads expanded by copying; same layout and conventions as the fast ops.
"""

from __future__ import annotations

import torch

from .common import per_query_head

Tensor = torch.Tensor


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
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    G, (q, k, v, g) = per_query_head(q, k, v, g)
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
