"""Export a linearized model to a hybrid architecture that transformers ships natively, so that plain
transformers (no liger import, no remote code) and the engines that support that architecture (llama.cpp,
vLLM) run it.

Target `qwen3_5` (transformers' `Qwen3_5ForCausalLM`, model_type "qwen3_5_text"): `layer_types` of
"linear_attention" (Qwen3.5's gated delta rule; liger's `native_gdn` mixer has exactly its parameters) and
"full_attention". Chosen over qwen3_next (every layer's MLP a mixture of experts unless listed in
`mlp_only_layers`, a fused per-group q/k/v/z layout) and olmo_hybrid (not in llama.cpp) because its dense
layout maps a dense host one to one and transformers, llama.cpp and vLLM all run it.

The mapping, per piece of the host (llama, mistral, qwen3: pre-norm blocks, SiLU gated MLP, RoPE, no biases):
- embeddings, MLP, lm_head: as they are;
- RMSNorm weights w -> w - 1 (Qwen3.5's RMSNorm multiplies by 1 + weight);
- a `native_gdn` layer -> linear_attn: in_proj_qkv = [q_proj; k_proj; v_proj] with each key head's rows
  repeated to the query heads, conv1d, in_proj_z/b/a, dt_bias, A_log, norm, out_proj = o_proj: exact;
- a softmax layer -> self_attn, which also has an output gate (q_proj's extra half: rows 0, so
  sigmoid = 1/2, and o_proj doubled: exact) and per-head q/k RMSNorm: exact for a host with q/k norms (qwen3);
  a host without them (llama, mistral) gets norms that rescale each query and key head to the mean RMS that
  the host's heads have on the check tokens (1 without them): NOT exact, as each token's own norm is lost (the
  export notes it and measures the logit difference); a mistral sliding window becomes global;
- a model with no softmax layer gets one more layer at the end, a full-attention layer whose weights are all
  zero (so it adds 0 to the residual stream: exact): transformers' Qwen3.5 cache counts the context on its
  full-attention layers and refuses a model without one. Its KV cache holds zeros and grows with the context
  (one layer's worth, against the original's every layer).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .arch import decoder_layers, model_type
from .atomic import atomic_output_dir
from .config import config_of
from .errors import ConfigError, UnsupportedModelError
from .mixers import LigerAttention

Tensor = torch.Tensor

TARGETS = ("qwen3_5",)  # the keys of EXPORTERS
# Host model types the qwen3_5 export maps, and whether their attention has per-head q/k RMSNorms.
QWEN3_5_HOSTS: dict[str, bool] = {"llama": False, "mistral": False, "qwen3": True}
REPORT_FILE = "liger_export.json"


@dataclass
class ExportReport:
    """What `export` wrote: the target, whether the exported model computes exactly liger's (up to float
    rounding), why not where it does not, and the largest logit difference on the check tokens."""

    target: str
    model_type: str
    layer_types: list[str]
    exact: bool
    notes: list[str] = field(default_factory=list)
    max_abs_logit_diff: float | None = None
    check_tokens: int = 0


def check_exportable(model: nn.Module, target: str) -> None:
    """ConfigError / UnsupportedModelError naming why `model` cannot be exported to `target`, and the fix."""
    if target not in TARGETS:
        raise ConfigError(f"unknown export target {target!r}; liger exports to: {', '.join(TARGETS)}")
    lcfg = config_of(model)
    if lcfg is None:
        raise ConfigError("export takes a linearized model (a folder written by `liger linearize` or `liger convert`)")
    mtype = model_type(model)
    if mtype not in QWEN3_5_HOSTS:
        raise UnsupportedModelError(
            f"cannot export a {mtype!r} model to {target}: its layers do not map one to one onto Qwen3.5's; "
            f"liger exports hosts of type {', '.join(sorted(QWEN3_5_HOSTS))}")
    linear = [m for m in model.modules() if isinstance(m, LigerAttention)]
    if linear and lcfg.mixer != "native_gdn":
        raise ConfigError(
            f"mixer {lcfg.mixer!r} has no counterpart in {target}: only 'native_gdn' has exactly the parameters of "
            "Qwen3.5's linear layer; train one with `liger linearize --mixer native_gdn`")
    cfg = model.config.get_text_config()
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"the host's MLP activation is {cfg.hidden_act!r}; {target}'s is silu")
    biased = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.bias is not None
              and not n.endswith("lm_head")]
    if biased:
        raise UnsupportedModelError(f"the host has biases (e.g. {biased[0]}); {target}'s layers have none")


def _host_norms(attn: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    return (getattr(getattr(attn, "q_norm", None), "weight", None), getattr(getattr(attn, "k_norm", None), "weight", None))


def _layer_types(model: nn.Module) -> list[str]:
    """The exported layers' kinds: one per host layer, plus a final identity full-attention layer if none is."""
    kinds = ["linear_attention" if isinstance(layer.self_attn, LigerAttention) else "full_attention"
             for layer in decoder_layers(model)]
    return kinds if "full_attention" in kinds else [*kinds, "full_attention"]


def qwen3_5_config(model: nn.Module):
    """The Qwen3_5TextConfig of the exported model (same sizes, RoPE, special tokens as the host)."""
    from transformers import Qwen3_5TextConfig

    cfg = model.config.get_text_config()
    kinds = _layer_types(model)
    Hq = cfg.num_attention_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    rope = dict(getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": cfg.rope_theta})
    rope["partial_rotary_factor"] = 1.0  # Qwen3.5 rotates a quarter of each head by default; the hosts all of it
    conv = next((m.core.conv.shape[1] for m in model.modules() if isinstance(m, LigerAttention)), 4)
    return Qwen3_5TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=len(kinds), num_attention_heads=Hq,
        num_key_value_heads=getattr(cfg, "num_key_value_heads", None) or Hq, head_dim=D,
        hidden_act="silu", max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=bool(getattr(model.config, "tie_word_embeddings", False)), rope_parameters=rope,
        attention_bias=False, linear_conv_kernel_dim=conv, linear_key_head_dim=D, linear_value_head_dim=D,
        linear_num_key_heads=Hq, linear_num_value_heads=Hq,
        layer_types=kinds,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
        architectures=["Qwen3_5ForCausalLM"],
    )


@torch.no_grad()
def qk_rms(model: nn.Module, ids: Tensor) -> dict[int, tuple[float, float]]:
    """Per softmax layer, the mean RMS of the host's query and key heads (before RoPE) on token ids [B, T]."""
    cfg = model.config.get_text_config()
    found: dict[int, list[float]] = {}
    hooks = []
    for i, layer in enumerate(decoder_layers(model)):
        attn = layer.self_attn
        if isinstance(attn, LigerAttention):
            continue
        D = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        found[i] = [0.0, 0.0]
        for j, proj in enumerate((attn.q_proj, attn.k_proj)):
            def hook(_m, _inp, out, i=i, j=j, D=D):
                found[i][j] = float(out.float().unflatten(-1, (-1, D)).pow(2).mean(-1).sqrt().mean())
            hooks.append(proj.register_forward_hook(hook))
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return {i: (q, k) for i, (q, k) in found.items()}


def qwen3_5_state_dict(model: nn.Module, qk_scale: dict[int, tuple[float, float]] | None = None
                       ) -> tuple[dict[str, Tensor], list[str]]:
    """The exported model's tensors (transformers' Qwen3_5ForCausalLM names) and notes on what is not exact.
    `qk_scale`: per softmax layer, the query and key RMS that a host without q/k norms maps to (`qk_rms`; 1
    where absent)."""
    cfg = model.config.get_text_config()
    has_qk_norm = QWEN3_5_HOSTS[model_type(model)]
    notes: list[str] = []
    base = getattr(model, "base_model", model)
    sd: dict[str, Tensor] = {"model.embed_tokens.weight": base.embed_tokens.weight,
                             "model.norm.weight": base.norm.weight - 1, "lm_head.weight": model.lm_head.weight}
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    for i, layer in enumerate(decoder_layers(model)):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = layer.input_layernorm.weight - 1
        sd[p + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight - 1
        for n in ("gate_proj", "up_proj", "down_proj"):
            sd[f"{p}mlp.{n}.weight"] = getattr(layer.mlp, n).weight
        attn = layer.self_attn
        if isinstance(attn, LigerAttention):
            core = attn.core
            G = attn.num_heads // attn.num_kv_heads
            D = attn.head_dim

            def heads(w: Tensor) -> Tensor:  # [Hk * D, hidden] -> each head's rows repeated G times
                return w.view(attn.num_kv_heads, D, -1).repeat_interleave(G, 0).reshape(-1, w.shape[-1])

            q, k, v = (getattr(attn, n).weight for n in (attn.spec.q_proj, attn.spec.k_proj, attn.spec.v_proj))
            la = p + "linear_attn."
            sd[la + "in_proj_qkv.weight"] = torch.cat([q, heads(k), heads(v)])
            sd[la + "conv1d.weight"] = core.conv[:, None, :]
            for n in ("in_proj_z", "in_proj_b", "in_proj_a"):
                sd[f"{la}{n}.weight"] = getattr(core, n).weight
            sd[la + "dt_bias"], sd[la + "A_log"] = core.dt_bias, core.A_log
            sd[la + "norm.weight"] = core.norm_weight
            sd[la + "out_proj.weight"] = getattr(attn, attn.spec.o_proj).weight
        else:
            Hq, D = cfg.num_attention_heads, attn.head_dim
            q = attn.q_proj.weight.view(Hq, D, -1)
            sa = p + "self_attn."
            # per head [query rows; output-gate rows = 0]: sigmoid(0) = 1/2, undone by doubling o_proj
            sd[sa + "q_proj.weight"] = torch.cat([q, torch.zeros_like(q)], 1).reshape(2 * Hq * D, -1)
            sd[sa + "k_proj.weight"], sd[sa + "v_proj.weight"] = attn.k_proj.weight, attn.v_proj.weight
            sd[sa + "o_proj.weight"] = 2 * attn.o_proj.weight
            qn, kn = _host_norms(attn)
            if has_qk_norm:
                sd[sa + "q_norm.weight"], sd[sa + "k_norm.weight"] = qn - 1, kn - 1
            else:
                sq, sk = (qk_scale or {}).get(i, (1.0, 1.0))
                sd[sa + "q_norm.weight"] = torch.full((D,), sq - 1, dtype=q.dtype)
                sd[sa + "k_norm.weight"] = torch.full((D,), sk - 1, dtype=q.dtype)
                notes.append(f"layer {i} (softmax): Qwen3.5's full attention normalises each query and key head "
                             f"(RMSNorm), which the host does not: mapped to fixed RMS {sq:.3g} and {sk:.3g}, not exact")
            if window and window < cfg.max_position_embeddings:
                notes.append(f"layer {i} (softmax): the host's {window}-token sliding window becomes global attention "
                             f"(exact up to {window} tokens)")
    n = len(decoder_layers(model))
    if len(_layer_types(model)) > n:  # the identity full-attention layer: every weight 0 (norms: 1 + 0)
        sd.update(_identity_layer(n, cfg, decoder_layers(model)[0].self_attn.head_dim,
                                  base.embed_tokens.weight.new_zeros))
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}, notes


def _identity_layer(i: int, cfg, D: int, zeros) -> dict[str, Tensor]:
    """Layer `i` as a full-attention layer whose every weight is 0: it adds 0 to the residual stream."""
    H, Hq, Hk, I = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    shapes = {"input_layernorm": (H,), "post_attention_layernorm": (H,),
              "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I),
              "self_attn.q_proj": (2 * Hq * D, H), "self_attn.k_proj": (Hk * D, H), "self_attn.v_proj": (Hk * D, H),
              "self_attn.o_proj": (H, Hq * D), "self_attn.q_norm": (D,), "self_attn.k_norm": (D,)}
    return {f"model.layers.{i}.{name}.weight": zeros(shape) for name, shape in shapes.items()}


def to_qwen3_5(model: nn.Module, check_ids: Tensor | None = None) -> tuple[nn.Module, list[str]]:
    """(transformers' Qwen3_5ForCausalLM holding `model`'s weights in `model`'s dtype, notes on inexact parts);
    `check_ids` [B, T] calibrate the q/k norms of a host without them (`qk_rms`). `model` has passed
    `check_exportable` (as `export` does first)."""
    from transformers import Qwen3_5ForCausalLM

    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model  # unmerged LoRA adapters
    config = qwen3_5_config(model)
    dtype = next(model.parameters()).dtype
    calibrate = check_ids is not None and not QWEN3_5_HOSTS[model_type(model)]
    sd, notes = qwen3_5_state_dict(model, qk_rms(model, check_ids) if calibrate else None)
    native = Qwen3_5ForCausalLM(config).to(dtype)
    missing, unexpected = native.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:  # a transformers version whose layout changed
        raise UnsupportedModelError(f"this transformers' Qwen3_5ForCausalLM does not take the exported tensors "
                                    f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    native.generation_config = model.generation_config
    return native.eval(), notes


EXPORTERS = {"qwen3_5": to_qwen3_5}  # target -> (model, check_ids) -> (native model, notes)


@torch.no_grad()
def max_logit_diff(a: nn.Module, b: nn.Module, ids: Tensor) -> float:
    """The largest |logit difference| of two models on token ids [B, T] (float64 comparison)."""
    return float((a(ids).logits.double() - b(ids).logits.double()).abs().max())


def export(model: nn.Module, target: str, out: str | Path, tokenizer=None, check_ids: Tensor | None = None
           ) -> ExportReport:
    """Write `model` (a linearized model) to the folder `out` (atomically) in `target`'s native form, with the
    tokenizer and `REPORT_FILE`; `check_ids` [B, T]: tokens on which to measure the logit difference (and
    calibrate q/k norms the host lacks, see `qk_rms`)."""
    check_exportable(model, target)
    native, notes = EXPORTERS[target](model, check_ids)
    report = ExportReport(target=target, model_type=native.config.model_type,
                          layer_types=list(native.config.layer_types), exact=not notes, notes=notes)
    if check_ids is not None:
        report.max_abs_logit_diff = max_logit_diff(model.eval(), native, check_ids)
        report.check_tokens = int(check_ids.numel())
    with atomic_output_dir(out, keep_other_files=False) as tmp:
        native.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
