"""Backend choice: on CUDA, with flash-linear-attention installed, the GLA ops run its Triton kernels;
everywhere else (and with LIGER_BACKEND=torch) they run liger's plain-PyTorch implementations.

flash-linear-attention wants as many key/value heads as query heads, so for grouped-query inputs k, v and
g are expanded on the fly (activations, not weights) and the state is kept at the key/value head count:
the G copies of a group's state are identical, the first is returned and an initial state is repeated.
"""

from __future__ import annotations

import functools
import os

import torch

Tensor = torch.Tensor


@functools.lru_cache(maxsize=1)
def _fla_gla():
    try:
        from fla.ops.gla import chunk_gla, fused_recurrent_gla
    except Exception:  # not installed, or no Triton / GPU support in this environment
        return None
    return chunk_gla, fused_recurrent_gla


def use_fla(x: Tensor) -> bool:
    return x.is_cuda and os.environ.get("LIGER_BACKEND", "auto") != "torch" and _fla_gla() is not None


def fla_gla(kind: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float | None,
            initial_state: Tensor | None, output_final_state: bool) -> tuple[Tensor, Tensor | None]:
    """Run flash-linear-attention's `chunk_gla` (kind "chunk") or `fused_recurrent_gla` ("recurrent")."""
    chunk, recurrent = _fla_gla()
    G = q.shape[2] // k.shape[2]
    if G > 1:
        k, v, g = (x.repeat_interleave(G, dim=2) for x in (k, v, g))
        if initial_state is not None:
            initial_state = initial_state.repeat_interleave(G, dim=1)
    if initial_state is not None:
        initial_state = initial_state.float()
    if kind == "chunk":
        o, s = chunk(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
    else:
        o, s = recurrent(q, k, v, gk=g, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state)
    if s is not None and G > 1:
        s = s[:, ::G]
    return o.to(v.dtype), s
