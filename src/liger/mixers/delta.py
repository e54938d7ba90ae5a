"""Liger-style Gated DeltaNet: the gated delta rule built from the pretrained q/k/v projections, no new
parameters.

Construction (q [B, T, Hq, D], k [B, T, Hk, D] after the host's q/k norms, no RoPE; m = mean_d k [B, T, Hk])::

    q' = q / |q|, k' = k / |k|                        L2-normalised over the head dimension (feature map l2norm)
    beta = sigmoid(m)                                 write strength in [0, 1]; 2 * sigmoid(m) in [0, 2]
                                                      with `delta_negative_eigen`
    g  = logsigmoid(m) / gate_normalizer              one log decay per head and token (<= 0)
    S_t = exp(g_t) (I - beta_t k'_t^T k'_t) S_{t-1} + beta_t k'_t^T v_t,   o_t = q'_t S_t   (scale 1)

Why these choices: the delta rule needs unit keys (then I - beta k^T k is a contraction for beta in [0, 2],
the state stays bounded, and retrieval q' S ~ cos(q, k) v reads values at their own scale), which softmax
features (all positive, so every pair of keys overlaps) would waste; L2 normalisation is also what Gated
DeltaNet itself applies. The mean key is the pooled key of Liger's scalar-gate mixers (`simple_gla`), so
beta and the decay come from the key projection as Liger's gates do; both rise with m (a token with a
large mean key writes strongly and keeps the memory longer). The state is float32 [B, Hk, D, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed.lasp import chunk_gated_delta_rule_sp
from ..ops import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from .base import FEATURE_MAPS, Kernels, MixerCore, State

Tensor = torch.Tensor

DELTA_KERNELS = Kernels(chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, chunk_gated_delta_rule_sp)


def delta_construct(q: Tensor, k: Tensor, gate_normalizer: float, negative_eigen: bool = False,
                    phi=FEATURE_MAPS["l2norm"]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(q', k', g, beta) from float32 q [B, T, Hq, D], k [B, T, Hk, D]: q', k' unit vectors; g and beta
    [B, T, Hk], g <= 0, beta in [0, 1] (or [0, 2] with `negative_eigen`)."""
    m = k.mean(-1)
    beta = torch.sigmoid(m) * (2.0 if negative_eigen else 1.0)
    return phi(q), phi(k), F.logsigmoid(m) / gate_normalizer, beta


class GatedDeltaNetCore(MixerCore):
    """The `gated_deltanet` mixer (module docstring) in the linear branch, plus the shared window branch."""

    def __init__(self, config, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__(config, num_heads, num_kv_heads, head_dim)
        self.phi = FEATURE_MAPS[config.feature_map]

    def linear(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None, state: State | None,
               want_state: bool) -> tuple[Tensor, State | None]:
        c = self.config
        qf, kf, g, beta = delta_construct(q.float(), k.float(), c.gate_normalizer, c.delta_negative_eigen, self.phi)
        if valid is not None:  # beta = 0, g = 0: padding leaves the state as it is
            m = valid[:, :, None].to(g.dtype)
            g, beta = g * m, beta * m
        return DELTA_KERNELS(qf, kf, v, g, beta, state=state, want_state=want_state)

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.num_kv_heads, self.head_dim, self.head_dim),)
