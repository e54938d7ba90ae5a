"""chunk_gated_delta_rule and fused_recurrent_gated_delta_rule against the float64 reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from op_contract import Case, GatedOpTests, assert_close, log_gate

from liger.ops import delta_naive as ref
from liger.ops.delta import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule


def make_delta(B, T, gen, heads=(4, 2), gate=None):
    (Hq, Hk), K, V = heads, 8, 12
    x = [torch.randn(B, T, Hq, K, generator=gen), F.normalize(torch.randn(B, T, Hk, K, generator=gen), dim=-1),
         torch.randn(B, T, Hk, V, generator=gen), log_gate(gen, (B, T, Hk), gate),
         2 * torch.rand(B, T, Hk, generator=gen)]  # beta in [0, 2]: negative eigenvalues included
    return x, torch.randn(B, Hk, K, V, generator=gen)


class TestGatedDeltaRule(GatedOpTests):
    case = Case(chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, ref.naive_recurrent_gated_delta_rule,
                make_delta)


def test_delta_l2norm_in_kernel_and_default_scale():
    (q, k, v, g, beta), _ = make_delta(1, 90, torch.Generator().manual_seed(7))
    k_raw = k * 3.0
    ro, _ = ref.naive_recurrent_gated_delta_rule(F.normalize(q, dim=-1), k, v, g, beta)
    for op in (chunk_gated_delta_rule, fused_recurrent_gated_delta_rule):
        o, s = op(q, k_raw, v, g, beta, use_qk_l2norm_in_kernel=True)
        assert s is None
        assert_close(o, ro, op.__name__)
