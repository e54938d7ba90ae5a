"""Layers kept as softmax attention (`--softmax-layers`, `--softmax-every`) under sequence parallelism.

The host's attention modules stay as they are; only their attention function changes. `enable` registers
`sp_attention` with transformers' `AttentionInterface` as "liger_sp_<base>" (base: the model's
implementation before, e.g. sdpa or eager) and switches the model to it. Outside a sequence-parallel
block it calls the base function with the same arguments: nothing changes. Inside one, each rank
all-gathers the keys and values of the whole sequence (after the host's q/k norms and RoPE at global
positions; B * T * Hk * 2D values per layer, as ring attention moves in all) and attends its own queries to
them under the global causal mask, with the host's scaling, sliding window and soft-capping; the backward
reduce-scatters the key and value gradients. The mask the model built for its slice is ignored: padding
comes from the whole sequences' mask (`sequence_parallel(..., valid=)`, which `sequence_parallel_forward`
sets). The implementation name is not saved with the model.
"""

from __future__ import annotations

import sys
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import sequence_parallel as sp_ops

Tensor = torch.Tensor

PREFIX = "liger_sp_"


def enable(model: nn.Module) -> None:
    """Route `model`'s softmax attention layers through `sp_attention` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    base = model.config._attn_implementation
    if base.startswith(PREFIX):
        return
    name = PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, partial(sp_attention, base=base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])  # the base's own masks
    model.set_attn_implementation(name)


def _base_function(module: nn.Module, base: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    return ALL_ATTENTION_FUNCTIONS.get_interface(base, eager)


def sp_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                 base: str, **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function signature: query [B, Hq, T_r, D], key and value [B, Hk, T_r, D] ->
    ([B, T_r, Hq, D], None). Under sequence parallelism, this rank's queries over the whole sequence's keys."""
    sp = sp_ops.current()
    if sp is None:
        return _base_function(module, base)(module, query, key, value, attention_mask, **kwargs)
    from .sequence import gather_sequence

    B, Hq, T, D = query.shape
    sp._check_length(T)
    keys = gather_sequence(key, list(sp.lengths), sp.group, dim=2)  # [B, Hk, T_all, D]
    values = gather_sequence(value, list(sp.lengths), sp.group, dim=2)
    pos_q = sp.start + torch.arange(T, device=query.device)[:, None]
    pos_k = torch.arange(sp.total, device=query.device)[None, :]
    allowed = pos_k <= pos_q  # [T, T_all]
    window = kwargs.get("sliding_window")
    if window:
        allowed = allowed & (pos_k > pos_q - window)
    mask = allowed[None, None]
    if sp.valid is not None:
        mask = mask & sp.valid.to(query.device)[:, None, None, :]  # [B, 1, T, T_all]
    # A query with no key to attend to (padding) attends to all, then outputs zeros: no NaN in either pass.
    has_key = mask.any(-1, keepdim=True)
    mask = mask | ~has_key
    scale = kwargs.get("scaling") or D**-0.5
    softcap = kwargs.get("softcap")
    if softcap is None:
        o = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
    else:  # soft-capped scores (Gemma 2): explicit
        G = Hq // keys.shape[1]
        s = torch.matmul(query.float(), keys.float().repeat_interleave(G, 1).transpose(-1, -2)) * scale
        s = torch.tanh(s / softcap) * softcap
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
        o = torch.matmul(p, values.float().repeat_interleave(G, 1)).to(query.dtype)
    o = o * has_key.to(o.dtype)
    return o.transpose(1, 2).contiguous(), None
