"""Liger Attention: one wrapper that replaces the softmax attention of every supported architecture.

    o = mix[0] * SWA(RoPE(q), RoPE(k), v) + mix[1] * GLA(phi(q), phi(k), v, g)      (then the host's o_proj)

- q, k, v come from the host attention's own projections (and its per-head q/k norms, if it has them), so
  the module adds no parameters and copies no weights; its attributes carry the host's names, so state-dict
  keys and LoRA target names are unchanged.
- phi = softmax over the head dimension; gate g = logsigmoid(k) / gate_normalizer per key channel (the
  pooling of Liger-GLA is the identity); the linear branch has no RoPE and scale 1, as in the Liger paper.
- SWA: softmax attention with the host's RoPE and scaling over the last `window` tokens (`window=0`: no
  window branch, pure gated linear attention).
- Grouped-query heads are read in place (liger.ops handle Hq = G * Hk): no repeat of k/v weights or states.
- Padding (from the model's 2-D attention mask, passed down as `liger_valid` by the hook that
  `liger.linearize` installs) contributes nothing to the state or to the window.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchSpec
from ..cache import liger_layer
from ..config import LigerConfig
from ..ops import window_attention

Tensor = torch.Tensor


def _sequence_parallel_active() -> bool:
    from ..ops import sequence_parallel

    return sequence_parallel.current() is not None


class LigerAttention(nn.Module):
    """Drop-in replacement for a host attention module; same call signature and return `(output, None)`."""

    def __init__(self, attn: nn.Module, spec: ArchSpec, config: LigerConfig, layer_idx: int) -> None:
        super().__init__()
        self.spec, self.liger, self.layer_idx = spec, config, layer_idx
        for name in spec.projections():
            setattr(self, name, getattr(attn, name))
        mc = attn.config
        self.config = mc
        self.num_heads = mc.num_attention_heads
        self.num_kv_heads = getattr(mc, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(attn, "head_dim", None) or mc.hidden_size // self.num_heads
        self.scaling = getattr(attn, "scaling", self.head_dim**-0.5)
        self.softcap = getattr(attn, "attn_logit_softcapping", None) or getattr(mc, "attn_logit_softcapping", None)
        self.host_window = getattr(attn, "sliding_window", None)  # the host's own window (Gemma, Mistral)
        self.apply_rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        self.is_causal = True
        from .cores import build_core

        self.core = build_core(config, self.num_heads, self.num_kv_heads, self.head_dim)
        # Attention transfer (LoLCATs stage 1): output the softmax attention, record the mixer's MSE to it.
        self.transfer = False
        self.transfer_loss: Tensor | None = None
        self._fast_core: bool | None = None  # decided on the first decode step (see _fast_decode_ok)

    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters the mixer adds to the host's (feature maps, window factors); none for Liger."""
        return list(self.core.parameters())

    def rope(self, q: Tensor, k: Tensor, position_embeddings) -> tuple[Tensor, Tensor]:
        cos, sin = position_embeddings
        return self.apply_rope(q, k, cos, sin, unsqueeze_dim=2)

    def extra_repr(self) -> str:
        c = self.liger
        return f"layer={self.layer_idx}, mixer={c.mixer}, window={c.window}, mix={c.mix}"

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, T, Hq, D], k and v [B, T, Hk, D], after the host's q/k norms (before RoPE)."""
        B, T, _ = x.shape
        s = self.spec
        if s.qkv_proj:
            nq, nk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = getattr(self, s.qkv_proj)(x).split([nq, nk, nk], -1)
        else:
            q, k, v = getattr(self, s.q_proj)(x), getattr(self, s.k_proj)(x), getattr(self, s.v_proj)(x)
        q, k, v = (t.view(B, T, -1, self.head_dim) for t in (q, k, v))
        if s.q_norm:
            q = getattr(self, s.q_norm)(q)
        if s.k_norm:
            k = getattr(self, s.k_norm)(k)
        return q, k, v

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        past_key_values=None,
        liger_valid: Tensor | None = None,
        **kwargs,
    ) -> tuple[Tensor, None]:
        B, T, _ = hidden_states.shape
        q, k, v = self.project(hidden_states)
        valid = None if liger_valid is None else liger_valid[:, -T:]
        cache = liger_layer(past_key_values, self.layer_idx) if past_key_values is not None else None
        if T == 1 and cache is not None and self._fast_decode_ok(valid, cache):
            o = self.decode_step(q, k, v, position_embeddings, valid, cache)
            return getattr(self, self.spec.o_proj)(o.reshape(B, 1, -1).to(hidden_states.dtype)), None
        o = self.core(self, q, k, v, position_embeddings, valid, cache)
        if self.transfer:
            target = self.softmax_attention(q, k, v, position_embeddings)
            self.transfer_loss = F.mse_loss(o.float(), target.float())
            o = target
        o = o.reshape(B, T, -1).to(hidden_states.dtype)
        return getattr(self, self.spec.o_proj)(o), None

    def _fast_decode_ok(self, valid: Tensor | None, cache) -> bool:
        """Whether `decode_step` may replace the core for this single-token step: the plain gated mixers
        (GLACore itself, not its subclasses), no gradient, no soft-capping, no sequence parallelism, a valid
        new token (padding goes through the core, which handles it), a window of 0 or >= 2 tokens, and a
        cache whose tensors may be written in place (not inference tensors outside inference mode)."""
        if self._fast_core is None:
            from .cores import GLA_MIXERS, GLACore, construct

            self._fast_core = type(self.core) is GLACore and self.liger.mixer in GLA_MIXERS
            self._fast_parts = (construct, self.core._parameters.get("mix"))  # a tuple: not registered
        w = self.liger.window
        return (
            self._fast_core and not self.transfer and not torch.is_grad_enabled() and not self.softcap
            and w != 1 and (w == 0 or cache.ring is not None or cache.seen == 0)
            and not _sequence_parallel_active() and (valid is None or bool(valid.all()))
            and not (cache.state is not None and cache.state.is_inference() and not torch.is_inference_mode_enabled())
        )

    def decode_step(self, q: Tensor, k: Tensor, v: Tensor, position_embeddings, valid: Tensor | None,
                    cache) -> Tensor:
        """One decode step of the gated mixers with few operations: the same result as `self.core` for a
        single valid token (checked by tests/test_generation.py and test_bench.py), [B, Hq, D] float32.

        q [B, 1, Hq, D], k and v [B, 1, Hk, D]. The recurrent state float32 [B, Hk, K, V] is updated in place
        (S <- exp(g) * S + k^T v); the window branch is one scaled_dot_product_attention over the ring of the
        last window - 1 keys plus the new one, whose key then overwrites the ring's oldest slot in place."""
        c = self.liger
        B, _, Hq, D = q.shape
        Hk = k.shape[2]
        construct, mix = self._fast_parts  # mix: learnable per-head weights [Hq, 2], or None (c.mix)
        qf, kf, g = (t[:, 0] for t in construct(c.mixer, q.float(), k.float(), c.gate_normalizer))
        S = cache.state
        if S is None:
            S = torch.zeros(B, Hk, D, v.shape[-1], dtype=torch.float32, device=q.device)
        S.mul_(g.exp().unsqueeze(-1)).addcmul_(kf.unsqueeze(-1), v[:, 0].float().unsqueeze(-2))
        o = torch.matmul(qf.view(B, Hk, Hq // Hk, D), S).view(B, Hq, -1)  # scale 1 (Liger)
        if c.window > 0:
            qr, kr = self.rope(q, k, position_embeddings)
            if cache.ring is None:  # decoding from an empty cache: an empty (invalid) window
                L = c.window - 1
                cache.window = (kr.new_zeros(B, L, Hk, D), v.new_zeros(B, L, Hk, v.shape[-1]),
                                torch.zeros(B, L, dtype=torch.bool, device=q.device))
            rk, rv, rvalid = cache.ring
            new_valid = torch.ones(B, 1, dtype=torch.bool, device=q.device) if valid is None else valid.bool()
            keys = torch.cat([rk, kr.to(rk.dtype)], 1).transpose(1, 2).float()  # [B, Hk, window, D]
            values = torch.cat([rv, v.to(rv.dtype)], 1).transpose(1, 2).float()
            mask = torch.cat([rvalid, new_valid], 1)[:, None, None, :]
            o_win = F.scaled_dot_product_attention(qr.transpose(1, 2).float(), keys, values, attn_mask=mask,
                                                   scale=self.scaling, enable_gqa=Hq != Hk).view(B, Hq, -1)
            if mix is not None:
                o = mix[:, 0, None] * o_win + mix[:, 1, None] * o
            else:
                o = o_win.mul_(c.mix[0]).add_(o, alpha=c.mix[1])
            cache.push_window(kr[:, 0], v[:, 0], new_valid[:, 0])
        cache.state = S
        cache.seen += 1
        cache.is_initialized = True
        return o

    def softmax_attention(self, q: Tensor, k: Tensor, v: Tensor, position_embeddings) -> Tensor:
        """The host's causal softmax attention (RoPE, scaling, soft-capping, sliding window), no grad:
        [B, T, Hq, D]. The target of attention transfer."""
        with torch.no_grad():
            qr, kr = self.rope(q, k, position_embeddings)
            T = q.shape[1]
            if self.softcap or (self.host_window and self.host_window < T):
                return window_attention(qr, kr, v, min(T, self.host_window or T), scale=self.scaling,
                                        softcap=self.softcap)
            o = F.scaled_dot_product_attention(
                qr.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                scale=self.scaling, enable_gqa=True,
            )
        return o.transpose(1, 2)
