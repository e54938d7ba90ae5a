"""Slow, obviously-correct float64 references of gated slot attention and the value-gated GLA it is built on
(liger.ops.gsa), for the tests: one token at a time (all heads at once), grouped-query heads expanded by
copying, GSA written slot-major as in its paper; same layouts and conventions as the fast ops."""

from __future__ import annotations

import torch

from .common import naive_start, per_query_head

Tensor = torch.Tensor


def naive_recurrent_value_gated_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """S_t = S_{t-1} diag(exp(g_t)) + k_t^T v_t; o_t = scale q_t S_t, with g [B, T, H, V], in float64."""
    B, T, Hq, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    G, (q, k, v, g) = per_query_head(q, k, v, g)
    S = naive_start(initial_state, G, (B, Hq, K, V), q)
    outs = []
    for t in range(T):
        S = S * torch.exp(g[:, t])[:, :, None, :] + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(scale * (q[:, t, :, :, None] * S).sum(2))
    return torch.stack(outs, 1), (S[:, ::G] if output_final_state else None)


def naive_recurrent_gsa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Gated slot attention as in the paper, slot-major, float64:
    K~_t = diag(a_t) K~_{t-1} + s_t^T k_t, V~_t = diag(a_t) V~_{t-1} + s_t^T v_t (both [M, D]),
    o_t = V~_t^T softmax(scale K~_t q_t), a_t = exp(g_t). The state returned is (K~^T [B, H, K, M], V~)."""
    B, T, Hq, K = q.shape
    M, V = s.shape[-1], v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    G, (q, k, v, s, g) = per_query_head(q, k, v, s, g)
    hk0, hv0 = (None, None) if initial_state is None else initial_state
    Ks = naive_start(hk0, G, (B, Hq, K, M), q).transpose(-1, -2)  # [B, Hq, M, K]
    Vs = naive_start(hv0, G, (B, Hq, M, V), q)
    outs = []
    for t in range(T):
        a, w = torch.exp(g[:, t])[..., None], s[:, t][..., None]  # [B, Hq, M, 1]
        Ks = a * Ks + w * k[:, t, :, None, :]
        Vs = a * Vs + w * v[:, t, :, None, :]
        p = torch.softmax(scale * (Ks * q[:, t, :, None, :]).sum(-1), -1)  # [B, Hq, M]
        outs.append((p[..., None] * Vs).sum(2))
    final = (Ks.transpose(-1, -2)[:, ::G], Vs[:, ::G]) if output_final_state else None
    return torch.stack(outs, 1), final
