"""LigerConfig: what `liger.linearize` builds. Serialised into the model's config.json under the key "liger"."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# Mixers whose linear branch is an unnormalised sum (`normalize` divides it by its normaliser).
NORMALIZABLE = ("gla", "hgrn2", "simple_gla", "retention")
MIXERS = ("gla", "hgrn2", "simple_gla", "retention", "lolcats", "gsa", "gated_deltanet", "lawcat", "native_gdn")
DEFAULT_WINDOW = 64  # the window of every mixer but native_gdn (which has none: it is the native layer as is)
# Feature maps each mixer supports; the first is its default.
FEATURE_MAPS = {"gla": ("softmax",), "hgrn2": ("softmax",), "simple_gla": ("softmax",), "retention": ("softmax",),
                "lolcats": ("hedgehog",), "gsa": ("softmax",), "gated_deltanet": ("l2norm",),
                "lawcat": ("softmax",), "native_gdn": ("l2norm",)}


@dataclass
class LigerConfig:
    """How each softmax attention is replaced.

    mixer: "gla" (Liger-GLA: per-key-channel decay), "hgrn2" (Liger-HGRN2: key 1 - sigmoid(k), decay
        logsigmoid(k)), "simple_gla" (one data-dependent decay per head), "retention" (RetNet's fixed
        per-head decays), "gsa" (Liger-GSA: keys pooled to `num_slots` slots), "gated_deltanet" (delta rule
        with a per-head decay; beta and decay from the mean key) -- none adds parameters -- or "lolcats"
        (Hedgehog feature maps, window and linear attention sharing one normaliser; trainable maps and window
        factors) or "lawcat" (trainable short causal convolution on q/k, identity at start, before a
        normalised Liger-GLA) or "native_gdn" (Gated DeltaNet exactly as Qwen3.5's linear layers parameterise it:
        short convolution, output gate, gated RMSNorm, its own beta/decay projections; no window; exportable with
        `liger export --to qwen3_5`, see liger.mixers.native_gdn).
    window: sliding-window softmax branch length in tokens (each query sees itself and the `window - 1`
        tokens before it); 0 disables the branch (pure gated linear attention). None (the default): 64
        (DEFAULT_WINDOW), or 0 for native_gdn, which cannot have one.
    mix: (window weight, linear weight); Liger Attention uses (0.5, 0.5).
    learnable_mix: make the two weights trainable per head (initialised to `mix`).
    gate_normalizer: g = logsigmoid(k) / gate_normalizer (natural-log decay per step, <= 0).
    feature_map: applied to q and k of the linear branch; None picks the mixer's own ("softmax" over the
        head dimension for gla, "hedgehog" for lolcats).
    softmax_layers: indices of layers kept as the original softmax attention (inter-layer hybrid).
    softmax_every: also keep one layer in every N as softmax (layers N-1, 2N-1, ...); 0 = off. With N = 4
        the linear-to-softmax ratio is 3:1.
    num_slots: gsa's memory slots per head (64, as Liger-GSA; capped at the head dimension).
    delta_negative_eigen: gated_deltanet only: beta = 2 * sigmoid(.) in [0, 2] instead of sigmoid(.) in
        [0, 1], so the state transition I - beta k^T k can have negative eigenvalues.
    normalize: gla, hgrn2, simple_gla and retention only: divide the linear branch by its normaliser,
        o = q'S / (q'z + eps) with z_t = exp(g_t) z_{t-1} + k'_t (one more state column), so that it is a
        weighted average of the values at every length instead of a sum that grows with the context (the other
        mixers are normalised or bounded by construction). None (the default) turns it on for those four: the
        unnormalised Liger-GLA branch collapses past the training length (docs/RESULTS.md, "Length").
        Checkpoints written before the option existed read as False.
    sparse_cache: M > 0 keeps, per layer, sequence and key head, the M tokens that have left the window and
        that a linear memory reconstructs worst (their exact keys and values), and the window's softmax covers
        them too (liger.mixers.sparse); a fixed M * (2 * Hk * D) elements per layer whatever the context.
        Needs a window (>= 1). 0 (the default): off.
    """

    mixer: str = "gla"
    window: int | None = None
    mix: tuple[float, float] = (0.5, 0.5)
    learnable_mix: bool = False
    gate_normalizer: float = 16.0
    feature_map: str | None = None
    softmax_layers: tuple[int, ...] = field(default_factory=tuple)
    softmax_every: int = 0
    num_slots: int = 64
    delta_negative_eigen: bool = False
    normalize: bool | None = None
    sparse_cache: int = 0

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ConfigError(f"unknown mixer {self.mixer!r}; choose one of {', '.join(MIXERS)}")
        maps = FEATURE_MAPS[self.mixer]
        if self.feature_map is None:
            self.feature_map = maps[0]
        if self.feature_map not in maps:
            raise ConfigError(
                f"feature_map {self.feature_map!r} does not go with mixer {self.mixer!r}; it supports {', '.join(maps)}"
            )
        if self.window is None:
            self.window = 0 if self.mixer == "native_gdn" else DEFAULT_WINDOW
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ConfigError(
                f"window must be a whole number of tokens >= 0 (0 disables the window branch), got {self.window!r}"
            )
        try:
            mix = tuple(float(m) for m in self.mix)
        except (TypeError, ValueError):
            mix = ()
        if len(mix) != 2:
            raise ConfigError(f"mix must be two numbers (window weight, linear weight), got {self.mix!r}")
        self.mix = mix
        if self.mixer == "native_gdn" and self.window:
            raise ConfigError(f"mixer 'native_gdn' is Qwen3.5's linear layer as is, which has no window branch; got "
                              f"window {self.window}: drop --window (or pass --window 0)")
        if not self.gate_normalizer > 0:
            raise ConfigError(f"gate_normalizer must be > 0, got {self.gate_normalizer!r}")
        self.gate_normalizer = float(self.gate_normalizer)
        try:
            layers = tuple(sorted({int(i) for i in self.softmax_layers}))
        except (TypeError, ValueError):
            raise ConfigError(
                f"softmax_layers must be layer indices (whole numbers), got {self.softmax_layers!r}"
            ) from None
        if any(i < 0 for i in layers):
            raise ConfigError(f"softmax_layers must be >= 0, got {list(layers)}")
        self.softmax_layers = layers
        if isinstance(self.softmax_every, bool) or not isinstance(self.softmax_every, int) or self.softmax_every < 0:
            raise ConfigError(f"softmax_every must be a whole number >= 0, got {self.softmax_every!r}")
        if isinstance(self.num_slots, bool) or not isinstance(self.num_slots, int) or self.num_slots < 1:
            raise ConfigError(f"num_slots must be a whole number >= 1, got {self.num_slots!r}")
        if not isinstance(self.delta_negative_eigen, bool):
            raise ConfigError(f"delta_negative_eigen must be true or false, got {self.delta_negative_eigen!r}")
        if self.delta_negative_eigen and self.mixer != "gated_deltanet":
            raise ConfigError("delta_negative_eigen applies to mixer 'gated_deltanet' only; drop it or use "
                              "--mixer gated_deltanet")
        if isinstance(self.sparse_cache, bool) or not isinstance(self.sparse_cache, int) or self.sparse_cache < 0:
            raise ConfigError(f"sparse_cache must be a whole number of tokens >= 0 (0: off), got {self.sparse_cache!r}")
        if self.sparse_cache and self.mixer == "native_gdn":
            raise ConfigError("the sparse cache joins the window's softmax, and mixer 'native_gdn' has no window: "
                              "drop --sparse-cache (or use another mixer)")
        if self.sparse_cache and self.window < 1:
            raise ConfigError("the sparse cache joins the window's softmax: it needs --window >= 1 (got 0); "
                              "set a window or drop --sparse-cache")
        if self.normalize is None:
            self.normalize = self.mixer in NORMALIZABLE
        if not isinstance(self.normalize, bool):
            raise ConfigError(f"normalize must be true or false, got {self.normalize!r}")
        if self.normalize and self.mixer not in NORMALIZABLE:
            raise ConfigError(f"normalize applies to the mixers {', '.join(NORMALIZABLE)} (mixer {self.mixer!r} is "
                              "normalised or bounded by construction); drop --normalize")

    def check_layers(self, num_layers: int) -> None:
        """Raise ConfigError if a softmax layer index is outside a model with `num_layers` layers."""
        bad = [i for i in self.softmax_layers if i >= num_layers]
        if bad:
            raise ConfigError(
                f"softmax_layers {bad} out of range: the model has {num_layers} layers (indices 0..{num_layers - 1})"
            )
        if self.softmax_every > num_layers:
            raise ConfigError(f"softmax_every {self.softmax_every} is more than the model's {num_layers} layers")

    def softmax_layer_set(self, num_layers: int) -> set[int]:
        """Every layer kept as softmax attention: softmax_layers plus one in every softmax_every."""
        every = set(range(self.softmax_every - 1, num_layers, self.softmax_every)) if self.softmax_every else set()
        return set(self.softmax_layers) | every

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mix"] = list(self.mix)
        d["softmax_layers"] = list(self.softmax_layers)
        return d

    def check_window(self, max_positions: int | None, flag: str = "window") -> None:
        """Raise ConfigError if the window is longer than the model's context limit (`max_positions`, its
        max_position_embeddings; None: no limit known). A window that long is full attention with a cache of
        `window - 1` positions allocated per layer and sequence."""
        if max_positions and self.window > max_positions:
            raise ConfigError(
                f"{flag} {self.window} is longer than the model's context limit of {max_positions} tokens "
                f"(max_position_embeddings); use a window of at most {max_positions} (default {DEFAULT_WINDOW})"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the liger config") -> "LigerConfig":
        """The config of a "liger" entry `d`; `source` (e.g. "/path/config.json") names it in errors."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"{source}: the \"liger\" entry must be a JSON object of liger settings (as `liger convert` "
                f"writes it), got {type(d).__name__} {d!r}; convert the model again"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"{source}: unknown liger config keys {sorted(unknown)}; this checkpoint may come from a newer "
                "liger version"
            )
        if "normalize" not in d:  # written before the option existed: those models are unnormalised
            d = {**d, "normalize": False}
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def config_of(model) -> LigerConfig | None:
    """The LigerConfig recorded in a model's config (`model.config.liger`, written by `liger.linearize`), or
    None for a model that is not linearized."""
    d = getattr(getattr(model, "config", None), "liger", None)
    return None if d is None else LigerConfig.from_dict(d, "the model's config")
