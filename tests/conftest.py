"""Shared fixtures: tiny random configs of transformers' own architectures, and error metrics."""

from __future__ import annotations

import os

import pytest
import torch
import transformers

ARCHS = ["llama", "mistral", "qwen2", "qwen3"]
MORE_ARCHS = ["mixtral", "qwen3_moe", "phi3", "gemma2", "gemma3_text"]


def tiny_model(arch: str = "llama", layers: int = 3, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny randomly initialised causal LM of a supported architecture (float32, eval mode).

    GQA (4 query heads, 2 key/value heads), head_dim 16 != hidden/heads, biases for Qwen2, q/k norms for Qwen3."""
    common = dict(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    extra = {
        "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
        "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
        "phi3": dict(partial_rotary_factor=0.5, pad_token_id=0, eos_token_id=2),
        "gemma2": dict(query_pre_attn_scalar=16, attn_logit_softcapping=20.0, final_logit_softcapping=30.0,
                       sliding_window=8),
        "gemma3_text": dict(query_pre_attn_scalar=16, sliding_window=8),
    }.get(arch, {})
    common.update(extra)
    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM),
        "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM),
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
        "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    model = cls[1](cls[0](**common)).eval()
    # Random init has tiny weights; widen the attention projections so the mixers see non-trivial inputs.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("q_proj", "k_proj", "v_proj", "qkv_proj")):
                p.mul_(8.0)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error of a against reference b."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests convert the bundled teacher into one shared folder (LIGER_CACHE), never the user's cache."""
    shared = os.environ.get("LIGER_TEST_CACHE") or str(tmp_path_factory.getbasetemp().parent / "liger-cache")
    monkeypatch.setenv("LIGER_CACHE", shared)
