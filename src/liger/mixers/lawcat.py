"""LAWCAT-style mixer: a short causal depthwise convolution over time on q and k, then a normalised Liger-GLA.

Construction (q [B, T, Hq, D], k [B, T, Hk, D] after the host's q/k norms, no RoPE)::

    q~ = conv_q(q), k~ = conv_k(k)                   causal depthwise, CONV_SIZE taps per channel
    q' = softmax(q~), k' = softmax(k~), g = logsigmoid(k~) / gate_normalizer       (Liger-GLA on q~, k~)
    o_t = q'_t S_t / (q'_t z_t + eps)                S_t = diag(exp(g_t)) S_{t-1} + k'_t^T v_t,
                                                     z_t = exp(g_t) * z_{t-1} + k'_t  (one GLA over [v, 1])

The convolutions are the method's own parameters (`conv_q` [Hq * D, CONV_SIZE], `conv_k` [Hk * D,
CONV_SIZE], trainable, no bias), initialised to the identity (last tap 1, the others 0), so the converted
model starts as Liger-GLA with a normaliser. The window branch (if any) sees the unconvolved q and k.
Padding is zeroed before the convolutions, so a left-padded sequence convolves as if it started at its
first real token. The state is (S and z: float32 [B, Hk, D, D + 1], the last CONV_SIZE - 1 inputs of each
convolution: float32 [B, Hq * D, CONV_SIZE - 1] and [B, Hk * D, CONV_SIZE - 1]).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import LigerConfig
from ..distributed.context import current
from ..ops import causal_conv1d
from .base import FEATURE_MAPS, MixerCore, State
from .gla import GLA_KERNELS, gla_construct

Tensor = torch.Tensor

CONV_SIZE = 4  # taps of the short convolution (LAWCAT, Mamba and Gated DeltaNet use 4)
EPS = 1e-6


def identity_conv(channels: int, size: int = CONV_SIZE) -> Tensor:
    """Depthwise causal-convolution weights [channels, size] that pass the current token through."""
    w = torch.zeros(channels, size)
    w[:, -1] = 1.0
    return w


class LawcatCore(MixerCore):
    """The `lawcat` mixer (module docstring) in the linear branch, plus the shared window branch."""

    def __init__(self, config: LigerConfig, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__(config, num_heads, num_kv_heads, head_dim)
        self.phi = FEATURE_MAPS[config.feature_map]
        self.conv_q = nn.Parameter(identity_conv(num_heads * head_dim))
        self.conv_k = nn.Parameter(identity_conv(num_kv_heads * head_dim))

    def linear(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None, state: State | None,
               want_state: bool) -> tuple[Tensor, State | None]:
        B, T, Hk, D = v.shape
        S, cq, ck = (None, None, None) if state is None else state
        ones = torch.ones(B, T, 1, 1, device=v.device) if valid is None else valid[:, :, None, None].float()
        qin, kin = (q.float() * ones).flatten(2), (k.float() * ones).flatten(2)
        if (sp := current()) is not None:  # the previous ranks' last inputs (no cache here)
            n = CONV_SIZE - 1
            cq, ck = (sp.preceding(x, n).transpose(1, 2) for x in (qin, kin))
        qc, cq = causal_conv1d(qin, self.conv_q, initial_state=cq, output_final_state=want_state)
        kc, ck = causal_conv1d(kin, self.conv_k, initial_state=ck, output_final_state=want_state)
        qf, kf, g = gla_construct(qc.view(q.shape), kc.view(k.shape), self.config.gate_normalizer, self.phi)
        kf, g = kf * ones, g * ones  # padding neither writes nor decays
        vv = torch.cat([v.float() * ones, ones.expand(B, T, Hk, 1)], -1)  # values and the normaliser's ones
        lin, S = GLA_KERNELS(qf, kf, vv, g, state=S, want_state=want_state)
        o = lin[..., :D] / (lin[..., D:] + EPS)
        return o, ((S, cq, ck) if want_state else None)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The short convolutions train with the LoRA adapters."""
        return [*super().adapter_parameters(), self.conv_q, self.conv_k]

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """float32 S and z [Hk, D, D + 1], and the convolutions' last CONV_SIZE - 1 inputs."""
        D, n = self.head_dim, CONV_SIZE - 1
        return ((self.num_kv_heads, D, D + 1), (self.num_heads * D, n), (self.num_kv_heads * D, n))
