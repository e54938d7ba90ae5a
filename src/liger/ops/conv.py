"""Short causal depthwise convolution over time (the token-shift convolution of Mamba, GatedDeltaNet and
LAWCAT), with a state that makes decoding token by token equal to the full convolution.

    y_t[c] = act(bias[c] + sum_{i<W} weight[c, i] x_{t-W+1+i}[c])      (the last tap sees the current token)

Layout: x [B, T, C] (time-first, channels last), weight [C, W], bias [C]; the state is the last W - 1 inputs,
float32 [B, C, W - 1] (the layout of the causal-conv1d package's conv_state), oldest first. Any float dtype
in; float32 arithmetic; y in x's dtype.

Input contract: any values; nothing to check. Each output is a sum over its own W inputs (shifted
multiply-adds, no matmul mixing later tokens in), so a NaN/inf input at position s reaches y_s .. y_{s+W-1}
and no earlier output. T = 0 gives an empty y and the initial state (or zeros) as the final state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import check_shape, float32_op

Tensor = torch.Tensor


@float32_op
def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Causal depthwise convolution: y [B, T, C] (x's dtype) and, if asked, the last W - 1 inputs float32
    [B, C, W - 1] (including inputs from initial_state when T < W - 1).

    initial_state: the W - 1 inputs before x (zeros if None), so that a call on x[:, t:] with the state of a
    call on x[:, :t] continues it exactly. activation: None or "silu". W - 1 shifted multiply-adds: the
    work is O(T * C * W) with no Python loop over tokens.
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"x must be [B, T, C] and weight [C, W]; got {tuple(x.shape)}, {tuple(weight.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    B, T, C = x.shape
    W = weight.shape[1]
    check_shape("bias", bias, (C,))
    check_shape("initial_state", initial_state, (B, C, W - 1))
    past = x.new_zeros(B, W - 1, C, dtype=torch.float32) if initial_state is None else initial_state.float().mT
    xs = torch.cat([past, x.float()], 1)  # [B, W - 1 + T, C]
    w = weight.float().t().contiguous()  # [W, C]
    y = xs[:, W - 1 :] * w[W - 1]
    for i in range(W - 1):  # taps, not tokens
        y = y + xs[:, i : i + T] * w[i]
    if bias is not None:
        y = y + bias.float()
    if activation is not None:
        y = F.silu(y)
    final = xs[:, T:].mT.contiguous() if output_final_state else None
    return y.to(x.dtype), final
