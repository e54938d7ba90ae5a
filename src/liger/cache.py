"""Constant-memory generation cache for linearized layers, as a transformers `CacheLayerMixin`.

A linearized layer keeps, per sequence, the recurrent state (float32 [B, Hk, K, V]; a tuple of tensors for
mixers with several, e.g. gsa's two slot memories or lawcat's convolution inputs) and the last
`window - 1` keys (after RoPE) and values with their validity flags ([B, window - 1, Hk, D], time-first).
Neither grows with the context. Layers kept as softmax attention keep transformers' own (growing) KV layer,
so any `transformers.Cache` works: `generate()` creates a `DynamicCache` and each linearized layer swaps its
own slot for a `LigerLayerCache` on first use (`liger_layer`). `LigerCache(model)` builds one up front.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer
from transformers.generation import GenerationMixin

from .arch import decoder_layers
from .config import config_of

Tensor = torch.Tensor


# transformers 5.24 renamed the cache argument and output field `past_key_values` -> `cache` (the old names
# still work there, with a deprecation warning, until 5.40). liger supports both sides of the rename.
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters \
    else "past_key_values"


def output_cache(out) -> Cache | None:
    """The cache returned by a model forward, under either name (`out.cache` from transformers 5.24)."""
    return out["cache"] if "cache" in out else out.get("past_key_values")


class LigerLayerCache(CacheLayerMixin):
    """State of one linearized layer. `seen` counts the tokens processed (padding included), which is what
    transformers reads as the sequence length to place new positions and masks."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.state: Tensor | tuple[Tensor, ...] | None = None
        # The window buffers as a ring: (k, v, valid) with slot `ring_pos` the oldest token. Multi-token
        # forwards store them in time order (ring_pos 0); single-token decode steps overwrite the oldest slot
        # in place (`push_window`), so decoding allocates no new buffers. `window` reads them in time order.
        self.ring: tuple[Tensor, Tensor, Tensor] | None = None
        self.ring_pos = 0
        # The sparse cache (LigerConfig.sparse_cache; liger.mixers.sparse), a tuple of tensors or None: the kept
        # keys, values [B, M, Hk, D], scores and positions [B, M, Hk], the window tokens' scores
        # [B, window - 1, Hk] (in the window's time order) and the novelty memory [B, Hk, D, D + 1].
        self.sparse: tuple[Tensor, ...] | None = None
        self.seen = 0

    @property
    def window(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """The last `window - 1` keys (after RoPE), values [B, window - 1, Hk, D] and validity flags
        [B, window - 1], oldest first (a copy when decode steps have rotated the ring)."""
        if self.ring is None or self.ring_pos == 0:
            return self.ring
        p = self.ring_pos
        return tuple(torch.cat([t[:, p:], t[:, :p]], 1) for t in self.ring)

    @window.setter
    def window(self, value: tuple[Tensor, Tensor, Tensor] | None) -> None:
        self.ring, self.ring_pos = value, 0

    def push_window(self, k: Tensor, v: Tensor, valid: Tensor) -> None:
        """Decode step: replace the oldest slot of the ring by one token's k, v [B, Hk, D] and valid [B]."""
        rk, rv, rvalid = self.ring
        p = self.ring_pos
        rk[:, p] = k
        rv[:, p] = v
        rvalid[:, p] = valid
        self.advance_ring()

    def advance_ring(self) -> None:
        """The oldest slot now holds the newest token (`push_window`, or a fused step that wrote it in place)."""
        self.ring_pos = (self.ring_pos + 1) % self.ring[0].shape[1]

    def writable_in_place(self) -> bool:
        """Whether a decode step may write the state in place: not an inference tensor outside inference mode."""
        state = self.state
        return not (isinstance(state, Tensor) and state.is_inference() and not torch.is_inference_mode_enabled())

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:  # pragma: no cover
        pass

    def update(self, *args, **kwargs):
        raise RuntimeError("a linearized layer's cache is written by its mixer, not through Cache.update")

    def store(self, state: Tensor | tuple[Tensor, ...] | None, window: tuple[Tensor, Tensor, Tensor] | None,
              n_new: int, sparse: tuple[Tensor, ...] | None = None) -> None:
        """After a forward of `n_new` tokens: the new state, window buffers (in time order) and sparse cache."""
        self.state, self.window, self.sparse = state, window, sparse
        self.advance(n_new)

    def decoded(self, state: Tensor | tuple[Tensor, ...]) -> None:
        """After a decode step that updated the state (in place or not) and pushed into the ring: one more token."""
        self.state = state
        self.advance(1)

    def advance(self, n_new: int) -> None:
        """Count `n_new` more tokens (a decode step that updated the state and the ring in place)."""
        self.seen += n_new
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.state, self.window, self.sparse, self.seen = None, None, None, 0  # window: resets the ring
        self.is_initialized = False

    def _map(self, fn) -> None:
        if isinstance(self.state, tuple):
            self.state = tuple(fn(t) for t in self.state)
        elif self.state is not None:
            self.state = fn(self.state)
        if self.window is not None:
            self.window = tuple(fn(t) for t in self.window)
        if self.sparse is not None:
            self.sparse = tuple(fn(t) for t in self.sparse)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "a recurrent state cannot be rolled back: assisted/speculative decoding is not supported by "
            "linearized layers"
        )

    @property
    def nbytes(self) -> int:
        states = self.state if isinstance(self.state, tuple) else (() if self.state is None else (self.state,))
        tensors = list(states) + list(self.ring or ()) + list(self.sparse or ())
        return sum(t.numel() * t.element_size() for t in tensors)


def liger_layer(cache: Cache, layer_idx: int) -> LigerLayerCache:
    """The `LigerLayerCache` of `layer_idx` in any transformers Cache, swapped in on first use."""
    while len(cache.layers) <= layer_idx:
        cls = getattr(cache, "layer_class_to_replicate", None) or DynamicLayer
        cache.layers.append(cls())
    layer = cache.layers[layer_idx]
    if not isinstance(layer, LigerLayerCache):
        if layer.get_seq_length() > 0:
            raise RuntimeError(f"cache layer {layer_idx} already holds softmax keys/values; use a fresh cache")
        layer = cache.layers[layer_idx] = LigerLayerCache()
    return layer


class LigerCache(Cache):
    """A cache for a linearized model: `LigerLayerCache` for linearized layers, `DynamicLayer` for the layers
    kept as softmax attention. Pass it to `generate` or `forward` as `cache=` (transformers >= 5.24) or
    `past_key_values=` (earlier; `CACHE_KWARG` holds the name)."""

    def __init__(self, model: torch.nn.Module) -> None:
        config = config_of(model)
        n = model.config.get_text_config().num_hidden_layers
        softmax = set(range(n)) if config is None else config.softmax_layer_set(n)  # layers not linearized
        super().__init__(layers=[DynamicLayer() if i in softmax else LigerLayerCache() for i in range(n)])


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by every tensor of a cache (states, window buffers and softmax KV)."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, LigerLayerCache):
            total += layer.nbytes
        else:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, Tensor):
                    total += t.numel() * t.element_size()
    return total


def cache_footprint(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, int]:
    """Cache bytes of one sequence, from the model's config: `fixed` (recurrent states and window buffers of
    the linearized layers, whatever the context length), `per_token` (KV of the layers kept as softmax) and
    `original_per_token` (KV of the same model with every layer softmax).

    A linearized layer's attention module reports its own bytes (`fixed_cache_nbytes(dtype)`, from its mixer's
    state shapes); a softmax layer's are 2 * Hk * D elements per token."""
    cfg = model.config.get_text_config()
    dtype = dtype or next(model.parameters()).dtype
    esize = torch.empty((), dtype=dtype).element_size()
    fixed = per_token = kv_token = 0
    for layer in decoder_layers(model):
        attn = layer.self_attn
        hk = getattr(attn, "num_kv_heads", None) or getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        d = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_token += 2 * hk * d * esize
        if hasattr(attn, "fixed_cache_nbytes"):
            fixed += attn.fixed_cache_nbytes(dtype)
        else:
            per_token += 2 * hk * d * esize
    return {"fixed": fixed, "per_token": per_token, "original_per_token": kv_token}
