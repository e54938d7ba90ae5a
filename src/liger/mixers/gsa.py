"""Liger-GSA: gated slot attention built from the pretrained q/k/v projections, no new parameters.

Construction (per token, q [B, T, Hq, D] and k [B, T, Hk, D] after the host's q/k norms, no RoPE)::

    q' = softmax(q), k' = softmax(k)                  over the head dimension (Liger's feature map)
    f  = avgpool_M(k)                                 the key pooled over D to M slots [B, T, Hk, M]
    g  = logsigmoid(f) / gate_normalizer              slot log decays (<= 0)
    s  = 1 - exp(g)                                   slot write weights, in [0, 1)
    o  = GSA(q', k', v, s, g), scale 1                see `liger.ops.gsa`

M = min(config.num_slots, D): 64 slots by default as Liger-GSA; heads narrower than 64 get one slot per
key channel (the pooling is then the identity). avgpool_M averages D/M neighbouring channels (adaptive
average pooling when M does not divide D). The state is the pair (hk float32 [B, Hk, D, M],
hv float32 [B, Hk, M, D]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LigerConfig
from ..distributed.lasp import chunk_gsa_sp
from ..ops import chunk_gsa, fused_recurrent_gsa
from .base import FEATURE_MAPS, Kernels, MixerCore, State

Tensor = torch.Tensor

GSA_KERNELS = Kernels(chunk_gsa, fused_recurrent_gsa, chunk_gsa_sp)


def gsa_construct(q: Tensor, k: Tensor, slots: int, gate_normalizer: float, phi=FEATURE_MAPS["softmax"]
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(q', k', s, g) of Liger-GSA from float32 q [B, T, Hq, D], k [B, T, Hk, D]; s and g [B, T, Hk, slots]."""
    B, T, Hk, D = k.shape
    f = k if slots == D else F.adaptive_avg_pool1d(k.reshape(B * T * Hk, 1, D), slots).view(B, T, Hk, slots)
    g = F.logsigmoid(f) / gate_normalizer
    return phi(q), phi(k), -torch.expm1(g), g


class GSACore(MixerCore):
    """The `gsa` mixer: Liger-GSA (module docstring) in the linear branch, plus the shared window branch."""

    def __init__(self, config: LigerConfig, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__(config, num_heads, num_kv_heads, head_dim)
        self.slots = min(config.num_slots, head_dim)
        self.phi = FEATURE_MAPS[config.feature_map]

    def linear(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None, state: State | None,
               want_state: bool) -> tuple[Tensor, State | None]:
        qf, kf, s, g = gsa_construct(q.float(), k.float(), self.slots, self.config.gate_normalizer, self.phi)
        if valid is not None:  # s = 0, g = 0: padding neither writes nor decays the slots
            m = valid[:, :, None, None].to(s.dtype)
            s, g = s * m, g * m
        return GSA_KERNELS(qf, kf, v, s, g, state=state, want_state=want_state)

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """float32 hk [Hk, D, M] and hv [Hk, M, D]."""
        return ((self.num_kv_heads, self.head_dim, self.slots), (self.num_kv_heads, self.slots, self.head_dim))
