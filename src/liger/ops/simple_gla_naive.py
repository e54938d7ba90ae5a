"""The slow, obviously-correct float64 reference of scalar-decay linear attention (liger.ops.simple_gla), for
the tests: GLA's reference with the per-head gate copied to every key channel."""

from __future__ import annotations

import torch

from .gla_naive import naive_recurrent_gla

Tensor = torch.Tensor


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
    per-head gate copied to every key channel (liger.ops.gla_naive.naive_recurrent_gla)."""
    return naive_recurrent_gla(q, k, v, g.unsqueeze(-1).expand_as(k), scale, initial_state, output_final_state)
