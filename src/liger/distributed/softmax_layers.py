"""Layers kept as softmax attention (`--softmax-layers`, `--softmax-every`) under sequence parallelism.

The host's attention modules stay as they are; only their attention function changes. `enable` registers
`sp_attention` with transformers' `AttentionInterface` as "liger_sp_<base>" (base: the model's
implementation before, e.g. sdpa or eager) and switches the model to it. Outside a sequence-parallel
block it calls the base function with the same arguments: nothing changes. Inside one, each rank
all-gathers the keys and values of the whole sequence (after the host's q/k norms and RoPE at global
positions; B * T * Hk * 2D values per layer, as ring attention moves in all) and attends its own queries to
them with the window op (`liger.ops.window_attention`, the keys before the slice as its `past`): the causal
mask, the host's scaling, sliding window and soft-capping; the backward reduce-scatters the key and value
gradients. The mask the model built for its slice is ignored: padding
comes from the whole sequences' mask (`sequence_parallel(..., valid=)`, which `sequence_parallel_forward`
sets). The implementation name is not saved with the model.
"""

from __future__ import annotations

import sys
from functools import partial

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..ops import window_attention
from .collectives import gather_sequence
from .context import current

Tensor = torch.Tensor

PREFIX = "liger_sp_"


def enable(model: nn.Module) -> None:
    """Route `model`'s softmax attention layers through `sp_attention` (idempotent)."""
    base = model.config._attn_implementation
    if base.startswith(PREFIX):
        return
    name = PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, partial(sp_attention, base=base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])  # the base's own masks
    model.set_attn_implementation(name)


def _base_function(module: nn.Module, base: str):
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    return ALL_ATTENTION_FUNCTIONS.get_interface(base, eager)


def sp_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                 base: str, **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function signature: query [B, Hq, T_r, D], key and value [B, Hk, T_r, D] ->
    ([B, T_r, Hq, D], None). Under sequence parallelism, this rank's queries over the whole sequence's keys."""
    sp = current()
    if sp is None:
        return _base_function(module, base)(module, query, key, value, attention_mask, **kwargs)
    T = query.shape[2]
    sp.check_length(T)
    # Every rank's keys and values, time-first [B, T_all, Hk, D]. This rank's own keys are taken from the
    # gathered tensors too, so every rank's graph holds them and runs the backward reduce-scatter.
    keys, values = (gather_sequence(x, list(sp.lengths), sp.group, dim=2).transpose(1, 2) for x in (key, value))
    valid = sp.valid.to(query.device) if sp.valid is not None else None
    start, end = sp.start, sp.start + T
    # The slice's queries over the keys before them: the window op with those keys as its `past` (the host's
    # sliding window if any, else reaching back to the sequence start); it applies the causal and padding
    # masks, the host's scaling and soft-capping, and outputs zeros for a query with no key (padding).
    window = min(kwargs.get("sliding_window") or end, end)
    first = start - min(start, window - 1)
    own_valid, past_valid = ((None, torch.ones(keys.shape[0], start - first, dtype=torch.bool, device=keys.device))
                             if valid is None else (valid[:, start:end], valid[:, first:start]))
    o = window_attention(query.transpose(1, 2), keys[:, start:end], values[:, start:end], window,
                         scale=kwargs.get("scaling"), key_valid=own_valid,
                         past=(keys[:, first:start], values[:, first:start], past_valid), softcap=kwargs.get("softcap"))
    return o.to(query.dtype), None
