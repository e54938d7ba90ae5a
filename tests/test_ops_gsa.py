"""chunk_gsa and fused_recurrent_gsa (gated slot attention), and the value-gated GLA they are built on,
against the float64 references."""

from __future__ import annotations

import torch
from op_contract import Case, GatedOpTests, log_gate

from liger.ops import gsa_naive as ref
from liger.ops.gsa import chunk_gsa, chunk_value_gated_gla, fused_recurrent_gsa, fused_recurrent_value_gated_gla


def make_value_gated_gla(B, T, gen, heads=(4, 2), gate=None):
    (Hq, Hk), K, V = heads, 8, 12
    x = [torch.randn(B, T, Hq, K, generator=gen), torch.randn(B, T, Hk, K, generator=gen),
         torch.randn(B, T, Hk, V, generator=gen), log_gate(gen, (B, T, Hk, V), gate)]
    return x, torch.randn(B, Hk, K, V, generator=gen)


def make_gsa(B, T, gen, heads=(4, 2), gate=None):
    (Hq, Hk), K, V, M = heads, 8, 12, 6
    x = [torch.randn(B, T, Hq, K, generator=gen), torch.randn(B, T, Hk, K, generator=gen),
         torch.randn(B, T, Hk, V, generator=gen), torch.rand(B, T, Hk, M, generator=gen),
         log_gate(gen, (B, T, Hk, M), gate)]
    return x, (torch.randn(B, Hk, K, M, generator=gen), torch.randn(B, Hk, M, V, generator=gen))


class TestValueGatedGLA(GatedOpTests):
    case = Case(chunk_value_gated_gla, fused_recurrent_value_gated_gla, ref.naive_recurrent_value_gated_gla,
                make_value_gated_gla)


class TestGSA(GatedOpTests):
    case = Case(chunk_gsa, fused_recurrent_gsa, ref.naive_recurrent_gsa, make_gsa)
