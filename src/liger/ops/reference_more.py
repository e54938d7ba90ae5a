"""Slow, obviously-correct float64 references for simple_gla, gsa, delta and conv, used by the tests only.

One token at a time (all heads at once), grouped-query heads expanded by copying, each recurrence written as
in its paper. Same layouts and conventions as the fast ops (liger.ops.simple_gla, .gsa, .delta, .conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import naive_recurrent_gla

Tensor = torch.Tensor


def _per_query_head(q: Tensor, *kv: Tensor) -> tuple[int, list[Tensor]]:
    """G = Hq // Hk and [q, *kv] in float64, the key-side heads repeated G times (query head h <- h // G)."""
    G = q.shape[2] // kv[0].shape[2]
    return G, [q.double()] + [x.double().repeat_interleave(G, dim=2) for x in kv]


def _start(state: Tensor | None, G: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An initial state [B, Hk, ...] repeated for the query heads [B, Hq, ...] in float64, or zeros of `shape`."""
    return like.new_zeros(shape, dtype=torch.float64) if state is None else state.double().repeat_interleave(G, 1)


def naive_recurrent_simple_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) S_{t-1} + k_t^T v_t; o_t = scale q_t S_t, float64, with g [B, T, H]: GLA with the
    per-head gate copied to every key channel (liger.ops.reference.naive_recurrent_gla)."""
    return naive_recurrent_gla(q, k, v, g.unsqueeze(-1).expand_as(k), scale, initial_state, output_final_state)


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
    G, (q, k, v, g) = _per_query_head(q, k, v, g)
    S = _start(initial_state, G, (B, Hq, K, V), q)
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
    G, (q, k, v, s, g) = _per_query_head(q, k, v, s, g)
    hk0, hv0 = (None, None) if initial_state is None else initial_state
    Ks = _start(hk0, G, (B, Hq, K, M), q).transpose(-1, -2)  # [B, Hq, M, K]
    Vs = _start(hv0, G, (B, Hq, M, V), q)
    outs = []
    for t in range(T):
        a, w = torch.exp(g[:, t])[..., None], s[:, t][..., None]  # [B, Hq, M, 1]
        Ks = a * Ks + w * k[:, t, :, None, :]
        Vs = a * Vs + w * v[:, t, :, None, :]
        p = torch.softmax(scale * (Ks * q[:, t, :, None, :]).sum(-1), -1)  # [B, Hq, M]
        outs.append((p[..., None] * Vs).sum(2))
    final = (Ks.transpose(-1, -2)[:, ::G], Vs[:, ::G]) if output_final_state else None
    return torch.stack(outs, 1), final


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
    G, (q, k, v, g, beta) = _per_query_head(q, k, v, g, beta)
    eye = torch.eye(K, dtype=torch.float64, device=q.device)
    S = _start(initial_state, G, (B, Hq, K, V), q)
    outs = []
    for t in range(T):
        kt, bt = k[:, t, :, :, None], beta[:, t, :, None, None]  # [B, Hq, K, 1], [B, Hq, 1, 1]
        P = eye - bt * kt * kt.transpose(-1, -2)
        S = torch.exp(g[:, t])[:, :, None, None] * (P @ S) + bt * kt * v[:, t, :, None, :]
        outs.append(scale * (q[:, t, :, :, None] * S).sum(2))
    return torch.stack(outs, 1), (S[:, ::G] if output_final_state else None)


def naive_causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """y_t = act(bias + sum_i weight[:, i] x_{t - W + 1 + i}), x [B, T, C], weight [C, W]; the W - 1 inputs
    before x come from initial_state [B, C, W - 1] (zeros if None). Returns y and the last W - 1 inputs."""
    B, T, C = x.shape
    W = weight.shape[1]
    past = x.new_zeros(B, C, W - 1, dtype=torch.float64) if initial_state is None else initial_state.double()
    xs = torch.cat([past.transpose(1, 2), x.double()], 1)  # [B, W - 1 + T, C]
    w = weight.double()
    y = torch.stack([sum(w[:, i] * xs[:, t + i] for i in range(W)) for t in range(T)], 1)
    if bias is not None:
        y = y + bias.double()
    if activation == "silu":
        y = F.silu(y)
    return y, (xs[:, T:].transpose(1, 2) if output_final_state else None)
