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
from ..ops.gla import gla_step
from ..ops.window import window_step
from ..ops import sequence_parallel

Tensor = torch.Tensor


def gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor | None, want_state: bool, scale: float = 1.0):
    """GLA with the decode kernel for single tokens of a cached sequence, the chunked one otherwise."""
    if (sp := sequence_parallel.current()) is not None:  # this rank holds a slice of the sequence (LASP-2)
        return sp.chunk_gla(q, k, v, g, scale=scale, initial_state=state, output_final_state=want_state)
    op = fused_recurrent_gla if (want_state and q.shape[1] == 1) else chunk_gla
    return op(q, k, v, g, scale=scale, initial_state=state, output_final_state=want_state)


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
        if cache is not None and q.shape[1] == 1 and self.decodes_in_place(attn, valid, cache):
            return self.decode_step(attn, q, k, v, position_embeddings, cache)
        o, state = self.linear(q, k, v, valid, cache.state if cache is not None else None, cache is not None)
        window = None
        if c.window > 0:
            qr, kr = attn.rope(q, k, position_embeddings)
            past = cache.window if cache is not None else None
            if (sp := sequence_parallel.current()) is not None:  # the previous ranks' last window - 1 tokens
                past = sp.halo(kr, v, valid, c.window, past)
            o_win = window_attention(qr, kr, v, c.window, scale=attn.scaling, key_valid=valid, past=past,
                                     softcap=attn.softcap)
            a, b = self.mix_weights()
            o = a * o_win + b * o
            if cache is not None:
                window = roll_window(past, kr.detach(), v.detach(), valid, c.window)
        if cache is not None:
            cache.store(detach_state(state), window, q.shape[1])
        return o

    def mix_weights(self) -> tuple:
        """The weights (window, linear): floats, or per-head [Hq, 1] parameters with `learnable_mix`."""
        mix = getattr(self, "mix", None)
        return (mix[:, 0, None], mix[:, 1, None]) if isinstance(mix, nn.Parameter) else self.config.mix

    def decodes_in_place(self, attn, valid: Tensor | None, cache: LigerLayerCache) -> bool:
        """Whether `decode_step` may serve this single-token step: GLACore's own linear branch (not a
        subclass's), no autograd, no attention transfer, no soft-capping, no sequence parallelism, a valid
        token (padding takes the general path), a window of 0 or >= 2 tokens, and cache tensors that may
        be written in place (not inference tensors outside inference mode)."""
        w = self.config.window
        state = cache.state
        return (
            type(self).linear is GLACore.linear and not torch.is_grad_enabled() and not attn.transfer
            and not attn.softcap and w != 1 and (w == 0 or cache.ring is not None or cache.seen == 0)
            and sequence_parallel.current() is None and (valid is None or bool(valid.all()))
            and not (state is not None and state.is_inference() and not torch.is_inference_mode_enabled())
        )

    def decode_step(self, attn, q: Tensor, k: Tensor, v: Tensor, position_embeddings,
                    cache: LigerLayerCache) -> Tensor:
        """`forward` for one valid token of a cached sequence, without allocating: the recurrent state is
        updated in place and the window is a ring whose oldest slot the new key overwrites. Same result as
        the general path (tests/test_bench.py). q [B, 1, Hq, D], k and v [B, 1, Hk, D] -> [B, 1, Hq, D]."""
        c = self.config
        B, _, Hq, D = q.shape
        qf, kf, g = (t[:, 0] for t in construct(c.mixer, q.float(), k.float(), c.gate_normalizer))
        if cache.state is None:
            cache.state = kf.new_zeros(B, k.shape[2], D, v.shape[-1])
        o, _ = gla_step(cache.state, qf, kf, v[:, 0].float(), g, in_place=True)
        if c.window > 0:
            qr, kr = attn.rope(q, k, position_embeddings)
            if cache.ring is None:  # decoding from an empty cache: an empty (invalid) window
                cache.window = roll_window(None, kr[:, :0], v[:, :0], None, c.window)
            o_win = window_step(qr[:, 0], cache.ring, kr[:, 0], v[:, 0], attn.scaling)
            a, b = self.mix_weights()
            o = a * o_win + b * o
            cache.push_window(kr[:, 0], v[:, 0], torch.ones(B, dtype=torch.bool, device=q.device))
        cache.seen += 1
        cache.is_initialized = True
        return o[:, None]

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
