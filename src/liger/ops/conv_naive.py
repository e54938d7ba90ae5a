"""The slow, obviously-correct float64 reference of the short causal convolution (liger.ops.conv), for the
tests: each output a sum over the taps, one token at a time; same layout and state as the op."""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def naive_causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """y_t = act(bias + sum_i weight[:, i] x_{t - W + 1 + i}), x [B, T, C], weight [C, W]; the W - 1 inputs
    before x come from initial_state [B, C, W - 1] (zeros if None). Returns y and the last W - 1 inputs."""
    B, T, C = x.shape
    W = weight.shape[1]
    past = x.new_zeros(B, C, W - 1, dtype=torch.float64) if initial_state is None else initial_state.double()
    xs = torch.cat([past.transpose(1, 2), x.double()], 1)  # [B, W - 1 + T, C]
    w = weight.double()
    y = torch.stack([sum(w[:, i] * xs[:, t + i] for i in range(W)) for t in range(T)], 1)
    if bias is not None:
        y = y + bias.double()
    if activation == "silu":
        y = F.silu(y)
    return y, (xs[:, T:].transpose(1, 2) if output_final_state else None)
