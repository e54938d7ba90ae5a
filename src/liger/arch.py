"""The supported architectures, as data: where a causal LM keeps its decoder layers, and where each attention
module keeps what the mixer reuses.

One wrapper serves them all (liger.mixers.LigerAttention). An entry names the attention module's
projection attributes and its optional per-head q/k norms. Head counts, head_dim, biases and the attention
scaling are read from the model itself (config and the module's `scaling`), never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class ArchSpec:
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    qkv_proj: str | None = None  # one fused projection, split [q | k | v] (Phi-3); replaces q/k/v_proj
    q_norm: str | None = None  # applied per head to q before RoPE, as the original does (Qwen3, Gemma 3)
    k_norm: str | None = None

    def projections(self) -> tuple[str, ...]:
        """Attribute names of the host modules the mixer reuses."""
        names = (self.qkv_proj,) if self.qkv_proj else (self.q_proj, self.k_proj, self.v_proj)
        return tuple(n for n in (*names, self.o_proj, self.q_norm, self.k_norm) if n)

    def lora_targets(self, roles: str) -> list[str]:
        """Module names for LoRA on the roles in `roles` ("q", "k", "v", "o"); a fused qkv projection counts
        for all three of q, k and v."""
        names = {"o": self.o_proj}
        for r in "qkv":
            names[r] = self.qkv_proj or getattr(self, f"{r}_proj")
        return list(dict.fromkeys(names[r] for r in roles))


_QK_NORM = ArchSpec(q_norm="q_norm", k_norm="k_norm")

# model_type -> where its attention keeps things. Soft-capping (Gemma 2), head_dim (Gemma: 256), biases
# (Qwen2), GQA and the attention scaling are read from the modules themselves.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(),  # Llama 2/3, SmolLM2
    "mistral": ArchSpec(),
    "mixtral": ArchSpec(),  # only attention changes; the MoE blocks stay
    "qwen2": ArchSpec(),  # q/k/v biases live in the reused nn.Linear modules
    "qwen3": _QK_NORM,
    "qwen3_moe": _QK_NORM,
    "phi3": ArchSpec(qkv_proj="qkv_proj"),  # partial RoPE is handled by its own apply_rotary_pos_emb
    "gemma2": ArchSpec(),  # attention logit soft-capping, query_pre_attn_scalar
    "gemma3_text": _QK_NORM,
}


def supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def model_type(model: nn.Module) -> str:
    """The model's (text) model_type, the key of ARCHITECTURES."""
    return config_model_type(model.config)


def config_model_type(config) -> str:
    """The (text) model_type of a transformers config."""
    return getattr(config.get_text_config(), "model_type", None) or config.model_type


def spec_for(config) -> ArchSpec:
    """The ARCHITECTURES entry of a transformers config; UnsupportedModelError for any other architecture."""
    mtype = config_model_type(config)
    spec = ARCHITECTURES.get(mtype)
    if spec is None:
        raise UnsupportedModelError(
            f"model type {mtype!r} is not supported; liger supports: {supported()}. "
            "Open an issue with the model's config.json to ask for it."
        )
    return spec


def arch_spec(model: nn.Module) -> ArchSpec:
    """The ARCHITECTURES entry of `model`; UnsupportedModelError for any other architecture."""
    return spec_for(model.config)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM (`model.base_model.layers`)."""
    layers = getattr(getattr(model, "base_model", model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModelError(
            f"cannot find the decoder layers of {type(model).__name__}; liger supports causal LMs of the "
            f"architectures: {supported()}"
        )
    return layers
