"""The mixers' cores: what replaces softmax attention between the host's projections and o_proj.

A core maps q [B, T, Hq, D] and k, v [B, T, Hk, D] (after the host's q/k norms, before RoPE) to the
attention output [B, T, Hq, D], reading and writing the layer's `LigerLayerCache` when generating.
`build_core` picks one from `LigerConfig.mixer`; cores with parameters (feature maps) own them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import LigerLayerCache
from ..config import LigerConfig
from ..ops import chunk_gla, fused_recurrent_gla, roll_window, window_attention

Tensor = torch.Tensor


def gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor | None, want_state: bool, scale: float = 1.0):
    """GLA with the decode kernel for single tokens of a cached sequence, the chunked one otherwise."""
    op = fused_recurrent_gla if (want_state and q.shape[1] == 1) else chunk_gla
    return op(q, k, v, g, scale=scale, initial_state=state, output_final_state=want_state)


class GLACore(nn.Module):
    """Liger-GLA: o = mix[0] * SWA(RoPE(q), RoPE(k), v) + mix[1] * GLA(phi(q), phi(k), v, g), with phi =
    softmax over the head dimension, g = logsigmoid(k) / gate_normalizer, scale 1, no RoPE in GLA."""

    def __init__(self, config: LigerConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, attn, q, k, v, position_embeddings, valid, cache: LigerLayerCache | None) -> Tensor:
        c = self.config
        qf = torch.softmax(q.float(), -1)
        kf = torch.softmax(k.float(), -1)
        g = F.logsigmoid(k.float()) / c.gate_normalizer
        if valid is not None:
            m = valid[:, :, None, None].to(kf.dtype)
            kf, g = kf * m, g * m
        o, state = gla(qf, kf, v, g, cache.state if cache is not None else None, cache is not None)
        window = None
        if c.window > 0:
            qr, kr = attn.rope(q, k, position_embeddings)
            past = cache.window if cache is not None else None
            o_win = window_attention(qr, kr, v, c.window, scale=attn.scaling, key_valid=valid, past=past,
                                     softcap=attn.softcap)
            o = c.mix[0] * o_win + c.mix[1] * o
            if cache is not None:
                window = roll_window(past, kr.detach(), v.detach(), valid, c.window)
        if cache is not None:
            cache.store(state.detach(), window, q.shape[1])
        return o


CORES = {"gla": GLACore}


def build_core(config: LigerConfig, num_heads: int, num_kv_heads: int, head_dim: int) -> nn.Module:
    if config.mixer == "lolcats":
        from .lolcats import LolcatsCore

        return LolcatsCore(config, num_heads, num_kv_heads, head_dim)
    return CORES[config.mixer](config)
