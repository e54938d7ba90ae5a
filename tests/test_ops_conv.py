"""causal_conv1d, in one call and one token at a time with its carried state, against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from op_contract import Case, OpTests, assert_close

from liger.ops import conv_naive as ref
from liger.ops.conv import causal_conv1d


def conv_decode(x, weight, bias=None, activation=None, initial_state=None, output_final_state=False):
    """causal_conv1d one token at a time, carrying the state: the decode path of the convolution."""
    ys, state = [], initial_state
    for t in range(x.shape[1]):
        y, state = causal_conv1d(x[:, t : t + 1], weight, bias, activation, state, True)
        ys.append(y)
    return torch.cat(ys, 1), (state if output_final_state else None)


def make_conv(B, T, gen, heads=None, gate=None):
    C, W = 6, 4
    x = [torch.randn(B, T, C, generator=gen), torch.randn(C, W, generator=gen), torch.randn(C, generator=gen)]
    return x, torch.randn(B, C, W - 1, generator=gen)


class TestCausalConv1d(OpTests):
    case = Case(causal_conv1d, conv_decode, ref.naive_causal_conv1d, make_conv, {"activation": "silu"})


def test_conv_short_inputs_keep_older_state():
    """With T < W - 1 the new state still holds some of the old one; decoding from it stays exact."""
    (x, w, b), h0 = make_conv(2, 7, torch.Generator().manual_seed(8))
    y, s = causal_conv1d(x[:, :2], w, b, initial_state=h0, output_final_state=True)
    assert torch.equal(s[:, :, 0], h0[:, :, 2]) and torch.equal(s[:, :, 1:], x[:, :2].mT)
    ry, _ = ref.naive_causal_conv1d(x, w, b, initial_state=h0)
    y2, _ = causal_conv1d(x[:, 2:], w, b, initial_state=s)
    assert_close(torch.cat([y, y2], 1), ry, "conv")
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, w[:-1])
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d(x, w, initial_state=h0[..., :-1])
