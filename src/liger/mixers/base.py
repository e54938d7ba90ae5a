"""What every mixer core shares: the sliding-window branch and its mix with the linear branch, the cache
writes, the kernel choice, and the cache bytes from the core's own state shapes.

A core maps q [B, T, Hq, D] and k, v [B, T, Hk, D] (after the host's q/k norms, before RoPE) to the attention
output [B, T, Hq, D]. It receives what it needs from the host attention as explicit arguments: `rope`
(q, k -> RoPE'd q, k at this call's positions), the softmax `scale`, the logit `softcap` (Gemma 2; None
elsewhere), `valid` (bool [B, T], False for padding; None when there is none) and the layer's `cache`
(a `LigerLayerCache` when generating, else None), which it changes only through the cache's methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..cache import LigerLayerCache
from ..config import LigerConfig
from ..distributed.context import current
from ..ops import l2norm, roll_window, window_attention
from .sparse import sparse_cache_nbytes, window_and_sparse_parts

Tensor = torch.Tensor
State = Tensor | tuple[Tensor, ...]
Rope = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _softmax(x: Tensor) -> Tensor:
    return torch.softmax(x, -1)


# The parameter-free feature maps (`LigerConfig.feature_map`) over the head dimension. LoLCATs' "hedgehog" is
# trainable and lives in its core.
FEATURE_MAPS: dict[str, Callable[[Tensor], Tensor]] = {"softmax": _softmax, "l2norm": l2norm}


@dataclass(frozen=True)
class Kernels:
    """One recurrence's implementations, all with the signature (q, k, v, *gates, scale, initial_state,
    output_final_state) -> (o, final_state): `chunk` (training, prefill), `recurrent` (a single decode token)
    and `parallel` (its LASP-2 form from liger.distributed.lasp, for this rank's slice of a sequence split
    over ranks). Calling it picks one: the one place where the kernel is chosen."""

    chunk: Callable
    recurrent: Callable
    parallel: Callable

    def __call__(self, q: Tensor, *inputs: Tensor, state: State | None, want_state: bool):
        if (sp := current()) is not None:  # this rank holds a slice of the sequence (LASP-2; no cache)
            return sp.run(self.parallel, q, *inputs, scale=1.0, initial_state=state, output_final_state=want_state)
        op = self.recurrent if (want_state and q.shape[1] == 1) else self.chunk
        return op(q, *inputs, scale=1.0, initial_state=state, output_final_state=want_state)


def detach_state(state: State | None) -> State | None:
    """A state (a tensor or a tuple of tensors) cut from the autograd graph, for the cache."""
    if state is None:
        return None
    return tuple(t.detach() for t in state) if isinstance(state, tuple) else state.detach()


class MixerCore(nn.Module):
    """Base of the cores: o = mix[0] * SWA(RoPE(q), RoPE(k), v) + mix[1] * linear(q, k, v), the linear branch
    being the subclass's `linear`; without a window (`window == 0`), o = linear(q, k, v). With
    `learnable_mix`, the two weights are per-head parameters [Hq, 2] initialised to `mix`.

    A subclass defines `linear` (its recurrence, with its state) and `state_shapes` (float32, per sequence)."""

    uses_mix = True  # False for a core that combines its window and linear parts itself (lolcats)
    uses_hidden = False  # True for a core that reads the layer's input and the host's raw q/k (native_gdn)

    def __init__(self, config: LigerConfig, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.config = config
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        if self.uses_mix and config.learnable_mix and config.window > 0:
            self.mix = nn.Parameter(torch.tensor(config.mix).repeat(num_heads, 1))  # [Hq, 2]

    def linear(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None, state: State | None,
               want_state: bool) -> tuple[Tensor, State | None]:
        """The linear branch: o [B, T, Hq, D] and, if `want_state`, the state after the T tokens (`state`, the
        one before them, or None). Padding (`valid` False) leaves the state unchanged."""
        raise NotImplementedError

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of one sequence's float32 recurrent state tensors (a lone tensor when there is one)."""
        raise NotImplementedError

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, rope: Rope, scale: float, softcap: float | None,
                valid: Tensor | None, cache: LigerLayerCache | None) -> Tensor:
        W = self.config.window
        o, state = self.linear(q, k, v, valid, cache.state if cache is not None else None, cache is not None)
        window = sparse = None
        if W > 0:
            qr, kr = rope(q, k)
            past = cache.window if cache is not None else None
            if self.config.sparse_cache:  # one softmax over the window and the sparse set
                (num, den, _), sparse = window_and_sparse_parts(self.config, qr, kr, k, v, valid, past, scale,
                                                                 softcap, cache)
                o_win = (num / den.clamp_min(1e-30)).to(v.dtype)
            else:
                if (sp := current()) is not None:  # the previous ranks' last window - 1 tokens
                    past = sp.halo(kr, v, valid, W, past)
                o_win = window_attention(qr, kr, v, W, scale=scale, key_valid=valid, past=past, softcap=softcap)
            a, b = self.mix_weights()
            o = a * o_win + b * o
            if cache is not None:
                window = roll_window(past, kr.detach(), v.detach(), valid, W)
        if cache is not None:
            cache.store(detach_state(state), window, q.shape[1], sparse)
        return o

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Own parameters that train beside the LoRA adapters (the learnable mix; the others: see subclasses)."""
        mix = getattr(self, "mix", None)
        return [mix] if isinstance(mix, nn.Parameter) else []

    def mix_weights(self) -> tuple:
        """The weights (window, linear): floats, or per-head [Hq, 1] parameters with `learnable_mix`."""
        mix = getattr(self, "mix", None)
        return (mix[:, 0, None], mix[:, 1, None]) if isinstance(mix, nn.Parameter) else self.config.mix

    def fixed_cache_nbytes(self, element_size: int) -> int:
        """Cache bytes of one sequence: the float32 state, plus the window's last `window - 1` keys and values
        (`element_size` bytes each) and validity flags, plus the sparse cache (liger.mixers.sparse). The same
        at every context length."""
        state = sum(math.prod(shape) for shape in self.state_shapes()) * 4
        W = self.config.window
        if W == 0:
            return state
        window = (W - 1) * (2 * self.num_kv_heads * self.head_dim * element_size + 1)
        return state + window + sparse_cache_nbytes(self.config, self.num_kv_heads, self.head_dim, element_size)
