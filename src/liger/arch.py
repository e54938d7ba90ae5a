"""The supported architectures, as data: where each attention module keeps what the mixer reuses.

One wrapper serves them all (liger.mixers.LigerAttention). An entry names the attention module's
projection attributes and its optional per-head q/k norms. Head counts, head_dim, biases and the attention
scaling are read from the model itself (config and the module's `scaling`), never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    q_norm: str | None = None  # applied per head to q before RoPE, as the original does (Qwen3)
    k_norm: str | None = None


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(),  # Llama 2/3, SmolLM2
    "mistral": ArchSpec(),
    "qwen2": ArchSpec(),  # q/k/v biases live in the reused nn.Linear modules
    "qwen3": ArchSpec(q_norm="q_norm", k_norm="k_norm"),
}


def supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))
