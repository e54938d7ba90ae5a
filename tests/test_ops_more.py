"""simple_gla, gsa (and its value-gated GLA), the gated delta rule and the causal convolution: chunked and
token-by-token paths against the float64 references of liger.ops.reference_more."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err

from liger.ops import reference_more as ref
from liger.ops.conv import causal_conv1d
from liger.ops.delta import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from liger.ops.gla import chunk_gla
from liger.ops.gsa import chunk_gsa, chunk_value_gated_gla, fused_recurrent_gsa, fused_recurrent_value_gated_gla
from liger.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla, retention_decays

TOL = 5e-3
Tensor = torch.Tensor


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The references and decode paths loop over tokens on tiny tensors, where intra-op threads cost more
    than they give (10x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_decode(x, weight, bias=None, activation=None, initial_state=None, output_final_state=False):
    """causal_conv1d one token at a time, carrying the state: the decode path of the convolution."""
    ys, state = [], initial_state
    for t in range(x.shape[1]):
        y, state = causal_conv1d(x[:, t : t + 1], weight, bias, activation, state, True)
        ys.append(y)
    return torch.cat(ys, 1), (state if output_final_state else None)


def _gate(gen: torch.Generator, shape: tuple[int, ...], value: float | None) -> Tensor:
    """Log decays from ~0 to very negative, or a constant."""
    if value is not None:
        return torch.full(shape, value)
    return F.logsigmoid(torch.randn(shape, generator=gen) * 3)


def make_simple_gla(B, T, gen, heads=(4, 2), gate=None):
    (Hq, Hk), K, V = heads, 8, 12
    x = [torch.randn(B, T, Hq, K, generator=gen), torch.randn(B, T, Hk, K, generator=gen),
         torch.randn(B, T, Hk, V, generator=gen), _gate(gen, (B, T, Hk), gate)]
    return x, torch.randn(B, Hk, K, V, generator=gen)


def make_value_gated_gla(B, T, gen, heads=(4, 2), gate=None):
    (Hq, Hk), K, V = heads, 8, 12
    x = [torch.randn(B, T, Hq, K, generator=gen), torch.randn(B, T, Hk, K, generator=gen),
         torch.randn(B, T, Hk, V, generator=gen), _gate(gen, (B, T, Hk, V), gate)]
    return x, torch.randn(B, Hk, K, V, generator=gen)


def make_gsa(B, T, gen, heads=(4, 2), gate=None):
    (Hq, Hk), K, V, M = heads, 8, 12, 6
    x = [torch.randn(B, T, Hq, K, generator=gen), torch.randn(B, T, Hk, K, generator=gen),
         torch.randn(B, T, Hk, V, generator=gen), torch.rand(B, T, Hk, M, generator=gen),
         _gate(gen, (B, T, Hk, M), gate)]
    return x, (torch.randn(B, Hk, K, M, generator=gen), torch.randn(B, Hk, M, V, generator=gen))


def make_delta(B, T, gen, heads=(4, 2), gate=None):
    (Hq, Hk), K, V = heads, 8, 12
    x = [torch.randn(B, T, Hq, K, generator=gen), F.normalize(torch.randn(B, T, Hk, K, generator=gen), dim=-1),
         torch.randn(B, T, Hk, V, generator=gen), _gate(gen, (B, T, Hk), gate),
         2 * torch.rand(B, T, Hk, generator=gen)]  # beta in [0, 2]: negative eigenvalues included
    return x, torch.randn(B, Hk, K, V, generator=gen)


def make_conv(B, T, gen, heads=None, gate=None):
    C, W = 6, 4
    x = [torch.randn(B, T, C, generator=gen), torch.randn(C, W, generator=gen), torch.randn(C, generator=gen)]
    return x, torch.randn(B, C, W - 1, generator=gen)


@dataclass
class Case:
    chunk: Callable
    recurrent: Callable
    reference: Callable
    make: Callable
    kwargs: dict = field(default_factory=dict)
    gated: bool = True


CASES = {
    "simple_gla": Case(chunk_simple_gla, fused_recurrent_simple_gla, ref.naive_recurrent_simple_gla,
                       make_simple_gla),
    "value_gated_gla": Case(chunk_value_gated_gla, fused_recurrent_value_gated_gla,
                            ref.naive_recurrent_value_gated_gla, make_value_gated_gla),
    "gsa": Case(chunk_gsa, fused_recurrent_gsa, ref.naive_recurrent_gsa, make_gsa),
    "delta": Case(chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, ref.naive_recurrent_gated_delta_rule,
                  make_delta),
    "conv": Case(causal_conv1d, conv_decode, ref.naive_causal_conv1d, make_conv, {"activation": "silu"}, False),
}
GATED = [name for name, case in CASES.items() if case.gated]


def flat(state) -> list[Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def run(op: Callable, case: Case, inputs: list[Tensor], h0) -> tuple[Tensor, list[Tensor]]:
    o, s = op(*inputs, initial_state=h0, output_final_state=True, **case.kwargs)
    return o, flat(s)


def assert_close(got: Tensor, want: Tensor, name: str, tol: float = TOL) -> None:
    assert got.shape == want.shape, name
    assert torch.isfinite(got).all(), name
    err = rel_err(got, want) if want.norm() > 1e-12 else (got - want).norm().item()  # exact zeros: absolute
    assert err < tol, f"{name}: {err:.2e}"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("T", [1, 63, 64, 65, 300])
@pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
def test_matches_reference_outputs_states_and_grads(name, T, with_state):
    case = CASES[name]
    gen = torch.Generator().manual_seed(T)
    inputs, h0 = case.make(2, T, gen)
    inputs = [x.requires_grad_() for x in inputs]
    h0 = tuple(s.requires_grad_() for s in flat(h0)) if with_state else None
    h0_arg = (h0 if len(h0) > 1 else h0[0]) if with_state else None
    leaves = inputs + (list(h0) if with_state else [])

    ro, rs = run(case.reference, case, inputs, h0_arg)
    do, ds = torch.randn(ro.shape, generator=gen), [torch.randn(s.shape, generator=gen) for s in rs]
    loss = (ro * do).sum() + sum((s * d).sum() for s, d in zip(rs, ds))
    rgrads = torch.autograd.grad(loss, leaves)
    for op in (case.chunk, case.recurrent):
        o, s = run(op, case, inputs, h0_arg)
        assert o.dtype == torch.float32 and all(x.dtype == torch.float32 for x in s)
        assert_close(o, ro, f"{op.__name__} o")
        for i, (a, b) in enumerate(zip(s, rs)):
            assert_close(a, b, f"{op.__name__} state {i}")
        loss = (o * do).sum() + sum((x * d).sum() for x, d in zip(s, ds))
        for i, (a, b) in enumerate(zip(torch.autograd.grad(loss, leaves), rgrads)):
            assert_close(a, b, f"{op.__name__} grad of input {i}")


def test_chunk_gla_gate_gradient_finite_at_the_floor():
    """d/dg of chunk_gla stays finite and exact when the gates sum to -20 * 32 over half a chunk (GSA's second
    pass relies on it)."""
    from liger.ops.reference import naive_recurrent_gla

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


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize("gate", [-20.0, 0.0])
def test_long_sequence_extreme_gates_are_finite_and_exact(name, gate):
    case = CASES[name]
    inputs, _ = case.make(1, 8192, torch.Generator().manual_seed(2), heads=(1, 1), gate=gate)
    with torch.no_grad():
        ro, rs = run(case.reference, case, inputs, None)
        for op in (case.chunk, case.recurrent):
            o, s = run(op, case, inputs, None)
            assert_close(o, ro, f"{op.__name__} o")
            for i, (a, b) in enumerate(zip(s, rs)):
                assert_close(a, b, f"{op.__name__} state {i}")


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize("gate", [-20.0, 0.0, -1e4])
def test_extreme_gates_gradients(name, gate):
    """Constant gates at the extremes (and far beyond -20: the log decays of pretrained keys can be huge):
    finite outputs and gradients, equal to the reference's."""
    case = CASES[name]
    inputs, _ = case.make(1, 200, torch.Generator().manual_seed(3), heads=(2, 1), gate=gate)
    inputs = [x.requires_grad_() for x in inputs]
    ro, _ = run(case.reference, case, inputs, None)
    rgrads = torch.autograd.grad(ro.sum(), inputs)
    for op in (case.chunk, case.recurrent):
        o, _ = run(op, case, inputs, None)
        assert_close(o, ro, f"{op.__name__} o")
        grads = torch.autograd.grad(o.sum(), inputs)
        for i, (a, b) in enumerate(zip(grads, rgrads)):
            assert_close(a, b, f"{op.__name__} grad of input {i}")


@pytest.mark.parametrize("name", list(CASES))
def test_split_sequence_with_carried_state_equals_one_call(name):
    """Prefill in two chunked calls, or chunked prefill then token-by-token decode: the same as one call."""
    case = CASES[name]
    T, T1 = 230, 101
    inputs, h0 = case.make(2, T, torch.Generator().manual_seed(4))
    o, s = run(case.chunk, case, inputs, None)
    first = [x[:, :T1] if x.dim() > 1 and x.shape[1] == T else x for x in inputs]
    second = [x[:, T1:] if x.dim() > 1 and x.shape[1] == T else x for x in inputs]
    o1, s1 = run(case.chunk, case, first, None)
    state = tuple(s1) if len(s1) > 1 else s1[0]
    for op in (case.chunk, case.recurrent):
        o2, s2 = run(op, case, second, state)
        assert_close(torch.cat([o1, o2], 1), o, f"{op.__name__} o", 1e-5)
        for a, b in zip(s2, s):
            assert_close(a, b, f"{op.__name__} state", 1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_bf16_inputs_accumulate_in_float32(name):
    case = CASES[name]
    inputs, h0 = case.make(1, 130, torch.Generator().manual_seed(5))
    inputs = [x.bfloat16() for x in inputs]
    ro, rs = run(case.reference, case, inputs, h0)
    for op in (case.chunk, case.recurrent):
        o, s = run(op, case, inputs, h0)
        assert o.dtype == torch.bfloat16 and all(x.dtype == torch.float32 for x in s)
        assert rel_err(o.float(), ro) < 1e-2
        for a, b in zip(s, rs):
            assert rel_err(a, b) < 1e-3


def test_simple_gla_constant_gamma_and_retention_decays():
    g_gamma = retention_decays(2)
    (q, k, v, _), _ = make_simple_gla(1, 70, torch.Generator().manual_seed(6), heads=(2, 2))
    g = g_gamma.view(1, 1, 2).expand(1, 70, 2)
    ro, _ = ref.naive_recurrent_simple_gla(q, k, v, g)
    for op in (chunk_simple_gla, fused_recurrent_simple_gla):
        assert_close(op(q, k, v, g_gamma=g_gamma)[0], ro, op.__name__)
        with pytest.raises(ValueError, match="exactly one"):
            op(q, k, v, g, g_gamma=g_gamma)


def test_delta_l2norm_in_kernel_and_default_scale():
    (q, k, v, g, beta), _ = make_delta(1, 90, torch.Generator().manual_seed(7))
    k_raw = k * 3.0
    ro, _ = ref.naive_recurrent_gated_delta_rule(F.normalize(q, dim=-1), k, v, g, beta)
    for op in (chunk_gated_delta_rule, fused_recurrent_gated_delta_rule):
        o, s = op(q, k_raw, v, g, beta, use_qk_l2norm_in_kernel=True)
        assert s is None
        assert_close(o, ro, op.__name__)


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


@pytest.mark.parametrize("name", GATED)
def test_bad_shapes_raise(name):
    case = CASES[name]
    inputs, h0 = case.make(1, 8, torch.Generator().manual_seed(9), heads=(3, 2))
    with pytest.raises(ValueError, match="multiple"):
        case.chunk(*inputs)
    inputs, h0 = case.make(1, 8, torch.Generator().manual_seed(9))
    bad = tuple(x[..., :-1] for x in flat(h0))
    with pytest.raises(ValueError, match="initial_state"):
        case.chunk(*inputs, initial_state=bad if len(bad) > 1 else bad[0])


def test_retention_decays_formula():
    H = 8
    want = torch.tensor([math.log(1 - 2 ** (-5 - h)) for h in range(H)])  # gamma_h = 1 - 2^(-5 - h)
    got = retention_decays(H)
    assert got.dtype == torch.float32 and torch.allclose(got, want)
