"""LoLCATs attention (Zhang et al. 2024): trainable Hedgehog feature maps, and a sliding softmax window
plus linear attention over everything before it, sharing one normaliser.

For query t (window W, keys t-W+1..t in the window, keys <= t-W in the linear part; q, k after RoPE)::

    o_t = (w * sum_win exp(s_ts - m_t) v_s + sum_lin phi(q_t).phi(k_s) v_s)
          / (w * sum_win exp(s_ts - m_t)     + sum_lin phi(q_t).phi(k_s))

with s_ts the scaled dot product, m_t its maximum over the window, w = sigmoid(window_factor) per head
(initialised to 0.1) and phi(x) = [softmax(x W_h), softmax(-x W_h)] (W_h per head, identity at init).
The linear part is GLA with zero decay over value columns [v, 1] (numerator and normaliser in one pass);
its state holds the tokens that have left the window, so decoding keeps a fixed-size cache.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cache import LigerLayerCache
from ..config import LigerConfig
from ..distributed.context import current
from ..ops import roll_window, window_attention_parts
from .base import MixerCore, Rope
from .sparse import window_and_sparse_parts
from .gla import GLA_KERNELS

Tensor = torch.Tensor

INIT_WINDOW_FACTOR = -2.1972245773362196  # sigmoid(x) = 0.1, as LoLCATs


class HedgehogFeatureMap(nn.Module):
    """phi(x) = [softmax(x W_h), softmax(-x W_h)] over the feature dim; x [B, T, H, D] -> float32 [B, T, H, 2D]."""

    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim).repeat(heads, 1, 1))  # [H, D, D]

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y = torch.einsum("bthd,hde->bthe", x.float(), self.weight.float())
            return torch.cat([torch.softmax(y, -1), torch.softmax(-y, -1)], -1)


class LolcatsCore(MixerCore):
    """The `lolcats` mixer (module docstring): its window and linear parts share one normaliser, so it combines
    them itself (no `mix`)."""

    uses_mix = False

    def __init__(self, config: LigerConfig, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__(config, num_heads, num_kv_heads, head_dim)
        self.feature_map_q = HedgehogFeatureMap(num_heads, head_dim)
        self.feature_map_k = HedgehogFeatureMap(num_kv_heads, head_dim)
        self.window_factor = nn.Parameter(torch.full((num_heads,), INIT_WINDOW_FACTOR))

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """float32 [Hk, 2D, D + 1]: feature dim 2D; the values and the normaliser."""
        return ((self.num_kv_heads, 2 * self.head_dim, self.head_dim + 1),)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, rope: Rope, scale: float, softcap: float | None,
                valid: Tensor | None, cache: LigerLayerCache | None) -> Tensor:
        W = self.config.window
        B, T, Hk, D = v.shape
        qr, kr = rope(q, k)
        fq = self.feature_map_q(qr)
        ones = torch.ones(B, T, 1, 1, device=v.device) if valid is None else valid[:, :, None, None].float()
        ones = ones.expand(B, T, Hk, 1)
        fk = self.feature_map_k(kr) * ones
        vv = torch.cat([v.float() * ones, ones], -1)  # [B, T, Hk, D + 1]: values and the normaliser
        state = cache.state if cache is not None else None
        want = cache is not None
        if W == 0:  # pure Hedgehog linear attention
            lin, state = GLA_KERNELS(fq, fk, vv, torch.zeros_like(fk), state=state, want_state=want)
            o = lin[..., :D] / (lin[..., D:] + 1e-6)
            if cache is not None:
                cache.store(state.detach(), None, T)
            return o.to(v.dtype)

        past = lin_past = cache.window if cache is not None else None
        if (sp := current()) is not None and not self.config.sparse_cache:
            # LASP-2: the W tokens before this rank's slice; the oldest leaves the window at the first query
            # (on a single process the cached state already holds it), the other W - 1 are the window's past
            lin_past = sp.halo(kr, v, valid, W + 1, past)
            past = tuple(x[:, 1:] for x in lin_past)
        if lin_past is None:
            Xk, Xv = fk, vv
            lead = 0
        else:  # the buffered window tokens come first; their keys enter the linear part as they leave
            pk, pv, pvalid = lin_past
            pones = pvalid[:, :, None, None].float().expand(*pvalid.shape, Hk, 1)
            Xk = torch.cat([self.feature_map_k(pk) * pones, fk], 1)
            Xv = torch.cat([torch.cat([pv.float() * pones, pones], -1), vv], 1)
            lead = pk.shape[1]
        # Query i's linear keys are the tokens at least W before it: X[.. i + lead - W + 1) minus the
        # ones already in the state. Shift so that key slot i holds the token that leaves query i's window.
        shift = W - lead  # > 0 when no full buffer precedes (prefill from scratch)
        Kp = _shift(Xk, shift)[:, :T]
        Vp = _shift(Xv, shift)[:, :T]
        lin, state = GLA_KERNELS(fq, Kp, Vp, torch.zeros_like(Kp), state=state, want_state=want)
        sparse = None
        if self.config.sparse_cache:  # the window part covers the sparse set too
            (num, den, _), sparse = window_and_sparse_parts(self.config, qr, kr, k, v, valid, past, scale, softcap,
                                                             cache)
        else:
            num, den = window_attention_parts(qr, kr, v, W, scale=scale, key_valid=valid, past=past, softcap=softcap)
        w = torch.sigmoid(self.window_factor.float())[None, None, :, None]
        o = (w * num + lin[..., :D]) / (w * den + lin[..., D:] + 1e-6)
        if cache is not None:
            # the state must also hold X[T - shift], the token that leaves the window when the next one comes
            e = T - shift
            if e >= 0:
                state = state + torch.einsum("bhk,bhv->bhkv", Xk[:, e], Xv[:, e])
            cache.store(state.detach(), roll_window(past, kr.detach(), v.detach(), valid, W), T, sparse)
        return o.to(v.dtype)


def _shift(x: Tensor, n: int) -> Tensor:
    """x delayed by n tokens along dim 1 (zeros enter first); n <= 0 drops the first -n tokens."""
    if n > 0:
        return torch.cat([x.new_zeros(x.shape[0], n, *x.shape[2:]), x], 1)
    return x[:, -n:]
