"""The slow, obviously-correct float64 reference of the gated delta rule (liger.ops.delta), for the tests:
one token at a time (all heads at once), grouped-query heads expanded by copying, the projection I - beta k^T k
written out; same layout and conventions as the fast ops."""

from __future__ import annotations

import torch

from .common import naive_start, per_query_head

Tensor = torch.Tensor


def naive_recurrent_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t (S: [K, V]); o_t = scale q_t S_t,
    float64, with g and beta [B, T, H]."""
    B, T, Hq, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    G, (q, k, v, g, beta) = per_query_head(q, k, v, g, beta)
    eye = torch.eye(K, dtype=torch.float64, device=q.device)
    S = naive_start(initial_state, G, (B, Hq, K, V), q)
    outs = []
    for t in range(T):
        kt, bt = k[:, t, :, :, None], beta[:, t, :, None, None]  # [B, Hq, K, 1], [B, Hq, 1, 1]
        P = eye - bt * kt * kt.transpose(-1, -2)
        S = torch.exp(g[:, t])[:, :, None, None] * (P @ S) + bt * kt * v[:, t, :, None, :]
        outs.append(scale * (q[:, t, :, :, None] * S).sum(2))
    return torch.stack(outs, 1), (S[:, ::G] if output_final_state else None)
