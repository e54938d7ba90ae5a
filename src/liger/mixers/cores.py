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
from ..errors import ConfigError
from ..ops import chunk_gla, fused_recurrent_gla, roll_window, window_attention
from ..ops import sequence_parallel

Tensor = torch.Tensor


def gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor | None, want_state: bool, scale: float = 1.0):
    """GLA with the decode kernel for single tokens of a cached sequence, the chunked one otherwise."""
    if (sp := sequence_parallel.current()) is not None:  # this rank holds a slice of the sequence (LASP-2)
        return sp.chunk_gla(q, k, v, g, scale=scale, initial_state=state, output_final_state=want_state)
    op = fused_recurrent_gla if (want_state and q.shape[1] == 1) else chunk_gla
    return op(q, k, v, g, scale=scale, initial_state=state, output_final_state=want_state)


def no_sequence_parallel(mixer: str) -> None:
    """Raise ConfigError under LASP-2 sequence parallelism, which covers the GLA-based mixers only."""
    if sequence_parallel.current() is not None:
        raise ConfigError(f"sequence parallelism supports the gated mixers (gla, hgrn2, simple_gla, retention), "
                          f"not {mixer}")


def _retention_log_decay(heads: int, device) -> Tensor:
    """RetNet's fixed per-head decays gamma_h = 1 - 2^(-5 - h), as natural logs [heads]."""
    return torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(heads, dtype=torch.float32, device=device)))


def construct(mixer: str, q: Tensor, k: Tensor, gate_normalizer: float) -> tuple[Tensor, Tensor, Tensor]:
    """Liger's construction of (q', k', g) for a gated linear recurrence from the pretrained q and k
    ([B, T, H, D], float32); g [B, T, Hk, D] <= 0. No parameters: everything comes from the key projection.

    gla:        q' = softmax(q), k' = softmax(k), g = logsigmoid(k) / normalizer      (Liger-GLA)
    hgrn2:      q' = softmax(q), k' = 1 - sigmoid(k), g = logsigmoid(k)               (Liger-HGRN2)
    simple_gla: q' = softmax(q), k' = softmax(k), g = logsigmoid(mean_d k) / normalizer, one per head
    retention:  q' = softmax(q), k' = softmax(k), g = log(1 - 2^(-5-h)), fixed per head (RetNet)
    """
    qf = torch.softmax(q, -1)
    if mixer == "hgrn2":
        return qf, 1 - torch.sigmoid(k), F.logsigmoid(k)
    kf = torch.softmax(k, -1)
    if mixer == "gla":
        g = F.logsigmoid(k) / gate_normalizer
    elif mixer == "simple_gla":
        g = (F.logsigmoid(k.mean(-1, keepdim=True)) / gate_normalizer).expand_as(k)
    else:  # retention
        g = _retention_log_decay(k.shape[2], k.device)[None, None, :, None].expand_as(k)
    return qf, kf, g


class GLACore(nn.Module):
    """The gated-linear mixers (gla, hgrn2, simple_gla, retention; see `construct`), optionally with the
    window branch: o = mix[0] * SWA(RoPE(q), RoPE(k), v) + mix[1] * GLA(q', k', v, g), scale 1, no RoPE in
    GLA. With `learnable_mix`, the two weights are per-head parameters initialised to `mix`.

    Other recurrences (gsa, gated_deltanet, lawcat) subclass it and override `linear` (and `state_nbytes`);
    the window branch, the mix and the cache handling are shared."""

    def __init__(self, config: LigerConfig, num_heads: int) -> None:
        super().__init__()
        self.config = config
        if config.learnable_mix and config.window > 0:
            self.mix = nn.Parameter(torch.tensor(config.mix).repeat(num_heads, 1))  # [Hq, 2]

    def forward(self, attn, q, k, v, position_embeddings, valid, cache: LigerLayerCache | None) -> Tensor:
        c = self.config
        o, state = self.linear(q, k, v, valid, cache.state if cache is not None else None, cache is not None)
        window = None
        if c.window > 0:
            qr, kr = attn.rope(q, k, position_embeddings)
            past = cache.window if cache is not None else None
            if (sp := sequence_parallel.current()) is not None:  # the previous ranks' last window - 1 tokens
                past = sp.halo(kr, v, valid, c.window, past)
            o_win = window_attention(qr, kr, v, c.window, scale=attn.scaling, key_valid=valid, past=past,
                                     softcap=attn.softcap)
            if isinstance(getattr(self, "mix", None), nn.Parameter):
                a, b = self.mix[:, 0, None], self.mix[:, 1, None]
            else:
                a, b = c.mix
            o = a * o_win + b * o
            if cache is not None:
                window = roll_window(past, kr.detach(), v.detach(), valid, c.window)
        if cache is not None:
            cache.store(detach_state(state), window, q.shape[1])
        return o

    def linear(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None, state, want_state: bool):
        """The linear branch: o [B, T, Hq, D] and, if `want_state`, the state after the T tokens (`state`, the
        one before them, or None). Padding (`valid` False) leaves the state unchanged."""
        c = self.config
        qf, kf, g = construct(c.mixer, q.float(), k.float(), c.gate_normalizer)
        if valid is not None:
            m = valid[:, :, None, None].to(kf.dtype)
            kf, g = kf * m, g * m
        return gla(qf, kf, v, g, state, want_state)

    def state_nbytes(self, num_kv_heads: int, head_dim: int) -> int:
        """Bytes of one sequence's recurrent state (float32 [Hk, D, D])."""
        return num_kv_heads * head_dim * head_dim * 4


def detach_state(state):
    """A state (a tensor or a tuple of tensors) cut from the autograd graph, for the cache."""
    return tuple(t.detach() for t in state) if isinstance(state, tuple) else state.detach()


GLA_MIXERS = ("gla", "hgrn2", "simple_gla", "retention")


def build_core(config: LigerConfig, num_heads: int, num_kv_heads: int, head_dim: int) -> nn.Module:
    if config.mixer == "lolcats":
        from .lolcats import LolcatsCore

        return LolcatsCore(config, num_heads, num_kv_heads, head_dim)
    if config.mixer == "gsa":
        from .gsa_core import GSACore

        return GSACore(config, num_heads, num_kv_heads, head_dim)
    if config.mixer == "gated_deltanet":
        from .delta_core import GatedDeltaNetCore

        return GatedDeltaNetCore(config, num_heads, num_kv_heads, head_dim)
    if config.mixer == "lawcat":
        from .lawcat_core import LawcatCore

        return LawcatCore(config, num_heads, num_kv_heads, head_dim)
    return GLACore(config, num_heads)
