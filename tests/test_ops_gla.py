"""chunk_gla and fused_recurrent_gla against the float64 token-by-token reference (liger.ops.gla_naive)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err
from op_contract import assert_close

from liger.ops import chunk_gla, fused_recurrent_gla
from liger.ops.gla_naive import naive_recurrent_gla

TOL = 5e-3


def make_inputs(B, T, Hq, Hk, K, V, seed=0, gate_scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hq, K, generator=gen)
    k = torch.randn(B, T, Hk, K, generator=gen)
    v = torch.randn(B, T, Hk, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, Hk, K, generator=gen) * gate_scale)  # decays from ~0 to very negative
    h0 = torch.randn(B, Hk, K, V, generator=gen)
    return q, k, v, g, h0


@pytest.mark.parametrize("op", [chunk_gla, fused_recurrent_gla], ids=["chunk", "fused_recurrent"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 1000])
@pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
def test_matches_reference_outputs_states_and_grads(op, T, with_state):
    B, Hq, Hk, K, V = 2, 4, 2, 8, 12  # grouped-query heads, K != V
    inputs = make_inputs(B, T, Hq, Hk, K, V, seed=T)
    q, k, v, g, h0 = (x.clone().requires_grad_() for x in inputs)
    h0_arg = h0 if with_state else None
    o, s = op(q, k, v, g, initial_state=h0_arg, output_final_state=True)
    ro, rs = naive_recurrent_gla(q, k, v, g, initial_state=h0_arg, output_final_state=True)
    assert o.shape == (B, T, Hq, V) and s.shape == (B, Hk, K, V) and s.dtype == torch.float32
    assert rel_err(o, ro) < TOL
    assert rel_err(s, rs) < TOL

    do, ds = torch.randn_like(o), torch.randn_like(s)
    leaves = [q, k, v, g] + ([h0] if with_state else [])
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves)
    rgrads = torch.autograd.grad((ro * do.double()).sum() + (rs * ds.double()).sum(), leaves)
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        assert torch.isfinite(a).all(), name
        if b.abs().max() == 0:  # T=1 without a state: d/dg is exactly 0; float rounding may leave ~1e-16
            assert a.abs().max() < 1e-6, name
        else:
            assert rel_err(a, b) < TOL, name


@pytest.mark.parametrize("step", [0.9, 1.6])  # within-chunk spans ~29 (float32 matmul) and ~51 (float64)
def test_both_intra_chunk_precisions_match_the_reference(step):
    from liger.ops.gla import FLOAT32_SPAN

    q, k, v, _, h0 = make_inputs(1, 200, 4, 2, 16, 16, seed=5)
    g = -step * torch.rand(1, 200, 2, 16, generator=torch.Generator().manual_seed(6)) * 2
    b = g[:, :192].reshape(1, 3, 64, 2, 16).cumsum(2)  # the first three 64-token chunks
    span = (b - b[:, :, 31:32]).abs().max().item()
    assert (span <= FLOAT32_SPAN) == (step < 1)
    q, k, v, g, h0 = (x.clone().requires_grad_() for x in (q, k, v, g, h0))
    o, s = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    ro, rs = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    assert rel_err(o, ro) < TOL and rel_err(s, rs) < TOL
    do = torch.randn_like(o)
    grads = torch.autograd.grad((o * do).sum() + s.sum(), [q, k, v, g, h0])
    rgrads = torch.autograd.grad((ro * do.double()).sum() + rs.sum(), [q, k, v, g, h0])
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        assert rel_err(a, b) < TOL, name


def test_final_state_only_when_asked_and_default_scale():
    q, k, v, g, _ = make_inputs(1, 10, 2, 2, 8, 8)
    o, s = chunk_gla(q, k, v, g)
    assert s is None
    ro, _ = naive_recurrent_gla(q, k, v, g)  # default scale K ** -0.5 in both
    assert rel_err(o, ro) < TOL


@pytest.mark.parametrize("g_value", [-20.0, 0.0])
def test_long_sequence_extreme_gates_are_finite_and_exact(g_value):
    T, K, V = 16384, 16, 16
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, T, 1, K, generator=gen)
    k = torch.randn(1, T, 1, K, generator=gen).softmax(-1)
    v = torch.randn(1, T, 1, V, generator=gen)
    g = torch.full((1, T, 1, K), g_value)
    o, s = chunk_gla(q, k, v, g, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    ro, rs = naive_recurrent_gla(q, k, v, g, output_final_state=True)
    assert rel_err(o, ro) < TOL and rel_err(s, rs) < TOL


def test_bf16_inputs_accumulate_in_float32():
    q, k, v, g, h0 = make_inputs(1, 130, 2, 1, 16, 16)
    o, s = chunk_gla(q.bfloat16(), k.bfloat16(), v.bfloat16(), g.bfloat16(), initial_state=h0, output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    ro, rs = naive_recurrent_gla(q.bfloat16(), k.bfloat16(), v.bfloat16(), g.bfloat16(), initial_state=h0,
                                 output_final_state=True)
    assert rel_err(o.float(), ro) < 1e-2 and rel_err(s, rs) < 1e-3


def test_bad_shapes_raise():
    q, k, v, g, _ = make_inputs(1, 8, 3, 2, 8, 8)
    with pytest.raises(ValueError, match="multiple"):
        chunk_gla(q, k, v, g)


def test_chunk_gla_gate_gradient_finite_at_the_floor():
    """d/dg of chunk_gla stays finite and exact when the gates sum to -20 * 32 over half a chunk (GSA's second
    pass relies on it)."""
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 100, 1, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 100, 1, 4, generator=gen, dtype=torch.float64)
    g = torch.full((1, 100, 1, 4), -20.0, dtype=torch.float64)
    ins = [x.float().requires_grad_() for x in (q, k, v, g)]
    refs = [x.clone().requires_grad_() for x in (q, k, v, g)]
    o = chunk_gla(*ins)[0]
    r = naive_recurrent_gla(*refs)[0]
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    ga = torch.autograd.grad((o * do.float()).sum(), ins)
    gb = torch.autograd.grad((r * do).sum(), refs)
    for a, b in zip(ga, gb):
        assert torch.isfinite(a).all()
        assert_close(a, b, "chunk_gla grad at g=-20")
