"""chunk_simple_gla and fused_recurrent_simple_gla (one decay per head) against the float64 reference, and
RetNet's fixed decays."""

from __future__ import annotations

import math

import pytest
import torch
from op_contract import Case, GatedOpTests, assert_close, log_gate

from liger.ops import simple_gla_naive as ref
from liger.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla, retention_decays


def make_simple_gla(B, T, gen, heads=(4, 2), gate=None):
    (Hq, Hk), K, V = heads, 8, 12
    x = [torch.randn(B, T, Hq, K, generator=gen), torch.randn(B, T, Hk, K, generator=gen),
         torch.randn(B, T, Hk, V, generator=gen), log_gate(gen, (B, T, Hk), gate)]
    return x, torch.randn(B, Hk, K, V, generator=gen)


class TestSimpleGLA(GatedOpTests):
    case = Case(chunk_simple_gla, fused_recurrent_simple_gla, ref.naive_recurrent_simple_gla, make_simple_gla)


def test_simple_gla_constant_gamma_and_retention_decays():
    g_gamma = retention_decays(2)
    (q, k, v, _), _ = make_simple_gla(1, 70, torch.Generator().manual_seed(6), heads=(2, 2))
    g = g_gamma.view(1, 1, 2).expand(1, 70, 2)
    ro, _ = ref.naive_recurrent_simple_gla(q, k, v, g)
    for op in (chunk_simple_gla, fused_recurrent_simple_gla):
        assert_close(op(q, k, v, g_gamma=g_gamma)[0], ro, op.__name__)
        with pytest.raises(ValueError, match="exactly one"):
            op(q, k, v, g, g_gamma=g_gamma)


def test_retention_decays_formula():
    H = 8
    want = torch.tensor([math.log(1 - 2 ** (-5 - h)) for h in range(H)])  # gamma_h = 1 - 2^(-5 - h)
    got = retention_decays(H)
    assert got.dtype == torch.float32 and torch.allclose(got, want)
