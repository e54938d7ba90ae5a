"""Liger Attention: one wrapper that replaces the softmax attention of every supported architecture.

    o = mix[0] * SWA(RoPE(q), RoPE(k), v) + mix[1] * GLA(phi(q), phi(k), v, g)      (then the host's o_proj)

- q, k, v come from the host attention's own projections (and its per-head q/k norms, if it has them), so
  the module adds no parameters and copies no weights; its attributes carry the host's names, so state-dict
  keys and LoRA target names are unchanged.
- The mixer's core (`core`, one per `LigerConfig.mixer`, see liger.mixers.registry) receives q, k, v and,
  as explicit arguments, the host's rotary embedding, attention scale and soft-capping. For Liger-GLA,
  phi = softmax over the head dimension and the gate g = logsigmoid(k) / gate_normalizer per key channel;
  the linear branch has no RoPE and scale 1, as in the Liger paper.
- SWA: softmax attention with the host's RoPE and scaling over the last `window` tokens (`window=0`: no
  window branch, pure gated linear attention).
- Grouped-query heads are read in place (liger.ops handle Hq = G * Hk): no repeat of k/v weights or states.
- Padding (from the model's 2-D attention mask, passed down as `liger_valid` by the hook that
  `liger.linearize` installs) contributes nothing to the state or to the window.
"""

from __future__ import annotations

import sys
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchSpec
from ..cache import liger_layer
from ..config import LigerConfig
from ..ops import window_attention
from .registry import build_core

Tensor = torch.Tensor


ALIGNMENT_METRICS = ("mse", "nmse", "cosine")


def alignment_error(o: Tensor, target: Tensor, metric: str = "mse") -> Tensor:
    """Error of a mixer's output `o` to the softmax attention's `target` (both [B, T, H, D]), float32 scalar:
    "mse" mean squared error; "nmse" that divided by the mean square of the target (scale-free, so every
    layer and head weighs alike); "cosine" 1 - mean cosine similarity per head vector."""
    o, target = o.float(), target.float()
    if metric == "mse":
        return F.mse_loss(o, target)
    if metric == "nmse":
        return F.mse_loss(o, target) / target.pow(2).mean().clamp_min(1e-12)
    if metric == "cosine":
        return 1 - F.cosine_similarity(o, target, dim=-1, eps=1e-6).mean()
    raise ValueError(f"unknown alignment metric {metric!r}; choose one of {', '.join(ALIGNMENT_METRICS)}")


class LigerAttention(nn.Module):
    """Drop-in replacement for a host attention module; same call signature and return `(output, None)`."""

    def __init__(self, attn: nn.Module, spec: ArchSpec, config: LigerConfig, layer_idx: int) -> None:
        super().__init__()
        self.spec, self.liger, self.layer_idx = spec, config, layer_idx
        self.host_class = type(attn)  # to rebuild the softmax attention (liger.surgery.reconfigure)
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
        self.core = build_core(config, self.num_heads, self.num_kv_heads, self.head_dim, mc)
        if self.core.uses_hidden:
            self.core.init_from_keys(self._proj(spec.qkv_proj or spec.k_proj, True).weight[self._k_rows()])
        # Attention transfer / alignment: output the softmax attention, record the mixer's error to it
        # (`transfer_metric`, see `alignment_error`), the target computed from the host's own projections.
        self.transfer = False
        self.transfer_metric = "mse"
        self.transfer_loss: Tensor | None = None
        # Teacher mode: output the host's softmax attention only, from its own projections (the mixer is
        # skipped): with the LoRA adapters off, the model is then its teacher (see liger.train.shared_teacher).
        self.softmax_only = False

    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters the mixer adds to the host's (feature maps, window factors); none for Liger."""
        return list(self.core.parameters())

    def rope(self, q: Tensor, k: Tensor, position_embeddings) -> tuple[Tensor, Tensor]:
        """The host's rotary embedding of q and k [B, T, H, D] at the positions of `position_embeddings`."""
        cos, sin = position_embeddings
        return self.apply_rope(q, k, cos, sin, unsqueeze_dim=2)

    def fixed_cache_nbytes(self, dtype: torch.dtype) -> int:
        """Cache bytes of one sequence (state and window, at any context length) with keys/values in `dtype`."""
        return self.core.fixed_cache_nbytes(torch.empty((), dtype=dtype).element_size())

    def extra_repr(self) -> str:
        c = self.liger
        return f"layer={self.layer_idx}, mixer={c.mixer}, window={c.window}, mix={c.mix}"

    def _proj(self, name: str, host: bool) -> nn.Module:
        """The projection `name`; with `host`, the host's own weights under a LoRA adapter (peft keeps them,
        frozen, as `base_layer`)."""
        m = getattr(self, name)
        return getattr(m, "base_layer", m) if host else m

    def adapted(self) -> bool:
        """Whether a LoRA adapter wraps one of the projections (then `project(host=True)` differs)."""
        return any(hasattr(getattr(self, n), "base_layer") for n in self.spec.projections())

    def _k_rows(self) -> slice:
        """The key rows of the host's k projection (of its fused qkv projection, if it has one)."""
        nq, nk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return slice(nq, nq + nk) if self.spec.qkv_proj else slice(0, nk)

    def project(self, x: Tensor, host: bool = False, norms: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, T, Hq, D], k and v [B, T, Hk, D], after the host's q/k norms unless not `norms` (before RoPE);
        `host`: from the host's own projection weights, without LoRA adapters."""
        B, T, _ = x.shape
        s = self.spec
        if s.qkv_proj:
            nq, nk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = self._proj(s.qkv_proj, host)(x).split([nq, nk, nk], -1)
        else:
            q, k, v = (self._proj(n, host)(x) for n in (s.q_proj, s.k_proj, s.v_proj))
        q, k, v = (t.view(B, T, -1, self.head_dim) for t in (q, k, v))
        if s.q_norm and norms:
            q = getattr(self, s.q_norm)(q)
        if s.k_norm and norms:
            k = getattr(self, s.k_norm)(k)
        return q, k, v

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        cache=None,
        liger_valid: Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[Tensor, None]:
        # transformers >= 5.24 passes the model's cache as `cache`, earlier versions as `past_key_values`.
        model_cache = cache if cache is not None else past_key_values
        B, T, _ = hidden_states.shape
        valid = None if liger_valid is None else liger_valid[:, -T:]
        cache = liger_layer(model_cache, self.layer_idx) if model_cache is not None else None
        if self.softmax_only or self.transfer:
            self._check_whole(valid, cache)
        if self.softmax_only:
            q, k, v = self.project(hidden_states, host=True)
            o = self.softmax_attention(q, k, v, position_embeddings).reshape(B, T, -1).to(hidden_states.dtype)
            return self._proj(self.spec.o_proj, True)(o), None
        if self.core.uses_hidden:  # the native layer: the host's raw projections and the layer's input
            q, k, v = self.project(hidden_states, norms=False)
            o = self.core(q, k, v, hidden=hidden_states, valid=valid, cache=cache)
        else:
            q, k, v = self.project(hidden_states)
            o = self.core(q, k, v, rope=partial(self.rope, position_embeddings=position_embeddings),
                          scale=self.scaling, softcap=self.softcap, valid=valid, cache=cache)
        if self.transfer:
            host = self.adapted()
            if host or self.core.uses_hidden:  # the target's q, k: the host's own, after its q/k norms
                q, k, v = self.project(hidden_states, host=host)
            target = self.softmax_attention(q, k, v, position_embeddings)
            self.transfer_loss = alignment_error(o, target, self.transfer_metric)
            o = target.reshape(B, T, -1).to(hidden_states.dtype)
            # the next layer gets exactly the teacher's input: the host's o_proj, not its adapter
            return self._proj(self.spec.o_proj, host)(o), None
        o = o.reshape(B, T, -1).to(hidden_states.dtype)
        return getattr(self, self.spec.o_proj)(o), None

    def _check_whole(self, valid: Tensor | None, cache) -> None:
        if (cache is not None and cache.seen > 0) or (valid is not None and not bool(valid.all())):
            mode = "teacher mode" if self.softmax_only else "attention transfer"
            raise ValueError(f"{mode} runs on whole unpadded sequences (it computes the host's causal softmax "
                             "attention over the call's tokens only); pass no attention mask with padding and no "
                             "cache of earlier tokens")

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
