"""The gated-linear mixers built from the pretrained q/k/v projections, no new parameters: Liger-GLA
(`gla`), Liger-HGRN2 (`hgrn2`), one data-dependent decay per head (`simple_gla`) and RetNet's fixed
per-head decays (`retention`). phi is the config's feature map (softmax over the head dimension)::

    gla:        q' = phi(q), k' = phi(k),         g = logsigmoid(k) / normalizer       per key channel
    hgrn2:      q' = phi(q), k' = 1 - sigmoid(k), g = logsigmoid(k)                    per key channel
    simple_gla: q' = phi(q), k' = phi(k),         g = logsigmoid(mean_d k) / normalizer, one per head
    retention:  q' = phi(q), k' = phi(k),         g = log(1 - 2^(-5-h)), fixed per head (RetNet)
    S_t = diag(exp(g_t)) S_{t-1} + k'_t^T v_t,   o_t = q'_t S_t   (scale 1, no RoPE; S float32 [B, Hk, D, D])

With `normalize`, the recurrence runs over the values [v, 1], so the state's last column is the normaliser
z_t = exp(g_t) z_{t-1} + k'_t, and o_t = q'_t S_t / (q'_t z_t + eps): a weighted average of the values
(S float32 [B, Hk, D, D + 1]).

Per-channel gates run `chunk_gla`, per-head gates `chunk_simple_gla`. A single valid token of a cached
sequence takes `decode_step`, which updates the state and the window ring in place (no allocation); with
`liger.ops.fused_decode` switched on, as one compiled graph per step (eager when it cannot compile).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cache import LigerLayerCache
from ..distributed.context import current
from ..distributed.lasp import chunk_gla_sp, chunk_simple_gla_sp
from ..ops import (chunk_gla, chunk_simple_gla, fused_recurrent_gla, fused_recurrent_simple_gla, gla_step,
                   retention_decays, roll_window, window_step)
from ..ops import fused_decode
from .base import FEATURE_MAPS, Kernels, MixerCore, Rope, State

Tensor = torch.Tensor

EPS = 1e-6  # added to the normaliser q'z (`normalize`)
GLA_KERNELS = Kernels(chunk_gla, fused_recurrent_gla, chunk_gla_sp)
SIMPLE_GLA_KERNELS = Kernels(chunk_simple_gla, fused_recurrent_simple_gla, chunk_simple_gla_sp)


def gla_construct(q: Tensor, k: Tensor, gate_normalizer: float, phi=FEATURE_MAPS["softmax"]):
    """Liger-GLA's (q', k', g) from float32 q [B, T, Hq, D], k [B, T, Hk, D]; g [B, T, Hk, D] <= 0."""
    return phi(q), phi(k), F.logsigmoid(k) / gate_normalizer


def hgrn2_construct(q: Tensor, k: Tensor, phi=FEATURE_MAPS["softmax"]):
    """Liger-HGRN2's (q', k', g): the key becomes 1 - sigmoid(k), the decay logsigmoid(k) [B, T, Hk, D]."""
    return phi(q), 1 - torch.sigmoid(k), F.logsigmoid(k)


def simple_gla_construct(q: Tensor, k: Tensor, gate_normalizer: float, phi=FEATURE_MAPS["softmax"]):
    """(q', k', g) with one decay per head and token from the mean key: g [B, T, Hk] <= 0."""
    return phi(q), phi(k), F.logsigmoid(k.mean(-1)) / gate_normalizer


def retention_construct(q: Tensor, k: Tensor, phi=FEATURE_MAPS["softmax"]):
    """(q', k', g) with RetNet's fixed per-head decays: g [B, T, Hk]."""
    B, T, Hk = k.shape[:3]
    return phi(q), phi(k), retention_decays(Hk).to(k.device).expand(B, T, Hk)


class GLACore(MixerCore):
    """`gla`: per-key-channel decay (module docstring). Subclasses change `construct` (and the kernels)."""

    kernels = GLA_KERNELS

    def __init__(self, config, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__(config, num_heads, num_kv_heads, head_dim)
        self.phi = FEATURE_MAPS[config.feature_map]

    def construct(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q', k', g) from float32 q, k; g [B, T, Hk, D] per key channel or [B, T, Hk] per head."""
        return gla_construct(q, k, self.config.gate_normalizer, self.phi)

    def linear(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None, state: State | None,
               want_state: bool) -> tuple[Tensor, State | None]:
        qf, kf, g = self.construct(q.float(), k.float())
        if valid is not None:  # k' = 0, g = 0: padding neither writes nor decays
            m = valid[:, :, None].to(kf.dtype)
            kf, g = kf * m[..., None], g * (m[..., None] if g.dim() == 4 else m)
        if not self.config.normalize:
            return self.kernels(qf, kf, v, g, state=state, want_state=want_state)
        o, state = self.kernels(qf, kf, with_ones(v), g, state=state, want_state=want_state)
        return normalized(o), state

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.num_kv_heads, self.head_dim, self.head_dim + self.config.normalize),)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, rope: Rope, scale: float, softcap: float | None,
                valid: Tensor | None, cache: LigerLayerCache | None) -> Tensor:
        if cache is not None and q.shape[1] == 1 and self.decodes_in_place(valid, softcap, cache):
            return self.decode_step(q, k, v, rope, scale, cache)
        return super().forward(q, k, v, rope=rope, scale=scale, softcap=softcap, valid=valid, cache=cache)

    def decodes_in_place(self, valid: Tensor | None, softcap: float | None, cache: LigerLayerCache) -> bool:
        """Whether `decode_step` may serve this single-token step: no autograd, no soft-capping, no sparse cache,
        no sequence parallelism, a valid token (padding takes the general path), a window of 0 or >= 2 tokens, and cache
        tensors that may be written in place (not inference tensors outside inference mode)."""
        W = self.config.window
        return (
            not torch.is_grad_enabled() and not softcap and W != 1 and not self.config.sparse_cache
            and (W == 0 or cache.ring is not None or cache.seen == 0)
            and current() is None and (valid is None or bool(valid.all())) and cache.writable_in_place()
        )

    def decode_step(self, q: Tensor, k: Tensor, v: Tensor, rope: Rope, scale: float,
                    cache: LigerLayerCache) -> Tensor:
        """`forward` for one valid token of a cached sequence, without allocating: the recurrent state is
        updated in place and the window is a ring whose oldest slot the new key overwrites. Same result as
        the general path (tests/test_bench.py). q [B, 1, Hq, D], k and v [B, 1, Hk, D] -> [B, 1, Hq, D]."""
        W = self.config.window
        # The compiled step (liger.ops.fused_decode) when switched on. Not without a window: that step is ~10
        # operators, and a compiled call costs as much as their dispatch.
        if fused_decode.is_enabled() and W > 0 and cache.ring is not None and isinstance(cache.state, Tensor):
            o = fused_decode.fused_decode_step(q, k, v, cache.state, cache.ring, cache.ring_pos, self.construct, rope,
                                               self.mix_weights(), scale, self.config.normalize)
            if o is not None:  # state and ring slot written in place; push_window's and decoded's bookkeeping
                cache.advance_ring()
                cache.decoded(cache.state)
                return o
        B, _, Hq, D = q.shape
        qf, kf, g = (t[:, 0] for t in self.construct(q.float(), k.float()))
        if g.dim() == 2:  # one decay per head [B, Hk]: the same for every key channel
            g = g[..., None]
        vf = with_ones(v[:, 0].float()) if self.config.normalize else v[:, 0].float()
        state = cache.state if cache.state is not None else kf.new_zeros(B, k.shape[2], D, vf.shape[-1])
        o, state = gla_step(state, qf, kf, vf, g, in_place=True)
        if self.config.normalize:
            o = normalized(o)
        if W > 0:
            qr, kr = rope(q, k)
            if cache.ring is None:  # decoding from an empty cache: an empty (invalid) window
                cache.window = roll_window(None, kr[:, :0], v[:, :0], None, W)
            o_win = window_step(qr[:, 0], cache.ring, kr[:, 0], v[:, 0], scale)
            a, b = self.mix_weights()
            o = a * o_win + b * o
            cache.push_window(kr[:, 0], v[:, 0], torch.ones(B, dtype=torch.bool, device=q.device))
        cache.decoded(state)
        return o[:, None]


def with_ones(v: Tensor) -> Tensor:
    """The values [..., D] with a column of ones appended [..., D + 1] (float32): the normaliser's input."""
    return torch.cat([v.float(), v.new_ones(*v.shape[:-1], 1, dtype=torch.float32)], -1)


def normalized(o: Tensor) -> Tensor:
    """q'S / (q'z + EPS) from the output over [v, 1] (its last column q'z)."""
    return o[..., :-1] / (o[..., -1:] + EPS)


class HGRN2Core(GLACore):
    """`hgrn2`: Liger-HGRN2 (module docstring)."""

    def construct(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return hgrn2_construct(q, k, self.phi)


class SimpleGLACore(GLACore):
    """`simple_gla`: one data-dependent decay per head (module docstring)."""

    kernels = SIMPLE_GLA_KERNELS

    def construct(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return simple_gla_construct(q, k, self.config.gate_normalizer, self.phi)


class RetentionCore(GLACore):
    """`retention`: RetNet's fixed per-head decays (module docstring)."""

    kernels = SIMPLE_GLA_KERNELS

    def construct(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return retention_construct(q, k, self.phi)
