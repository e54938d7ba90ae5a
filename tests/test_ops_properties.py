"""Property-based tests of every op's numerical contract (hypothesis; derandomized, bounded example counts).

- Every op against its float64 reference over random shapes (B, T from 1 and odd lengths, Hq = G * Hk, K != V),
  gates from ~0 to -30 per step, beta in [0, 2], with and without initial states, float32 and bfloat16 inputs.
- Causality for non-finite inputs: a NaN or inf planted at a random position s changes no output before s (in
  a chunk's earlier rows included) and makes NaN the outputs it reaches.
- The gate contract: a gate > 0 or a beta outside [0, 2] raises a ValueError naming the op, the input and the
  value; finite inputs give the same bits with and without the check.
- T = 0: an empty output and the initial state (or zeros) as the final state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_contract import assert_close, flat

from liger.ops import conv_naive, delta_naive, gla_naive, gsa_naive, simple_gla_naive, window_naive
from liger.ops.conv import causal_conv1d
from liger.ops.delta import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from liger.ops.gla import chunk_gla, fused_recurrent_gla
from liger.ops.gsa import chunk_gsa, chunk_value_gated_gla, fused_recurrent_gsa, fused_recurrent_value_gated_gla
from liger.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
from liger.ops.window import roll_window, window_attention, window_attention_parts

Tensor = torch.Tensor
FEW = settings(max_examples=10, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MORE = settings(FEW, max_examples=16)  # for the per-family tests (about 0.1 s an example on one core)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors and token loops: intra-op threads cost more than they give (see op_contract)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Family:
    """One recurrence: its chunked and token-by-token ops, its reference, and the names of its inputs after
    q, k, v (in the ops' positional order), which of them are gates, and the state's shapes."""

    chunk: Callable
    recurrent: Callable
    reference: Callable
    extra: tuple[str, ...]
    gates: tuple[str, ...]


FAMILIES = {
    "gla": Family(chunk_gla, fused_recurrent_gla, gla_naive.naive_recurrent_gla, ("g",), ("g",)),
    "simple_gla": Family(chunk_simple_gla, fused_recurrent_simple_gla, simple_gla_naive.naive_recurrent_simple_gla,
                         ("g",), ("g",)),
    "value_gated_gla": Family(chunk_value_gated_gla, fused_recurrent_value_gated_gla,
                              gsa_naive.naive_recurrent_value_gated_gla, ("g",), ("g",)),
    "gsa": Family(chunk_gsa, fused_recurrent_gsa, gsa_naive.naive_recurrent_gsa, ("s", "g"), ("g",)),
    "delta": Family(chunk_gated_delta_rule, fused_recurrent_gated_delta_rule,
                    delta_naive.naive_recurrent_gated_delta_rule, ("g", "beta"), ("g",)),
}


@dataclass
class Draw:
    B: int
    T: int
    Hk: int
    G: int
    K: int
    V: int
    M: int
    gate_low: float  # gates uniform in [gate_low, 0]
    beta_ends: bool  # beta exactly 0 and 2 at some tokens
    with_state: bool
    seed: int


@st.composite
def draws(draw, max_T: int = 140) -> Draw:
    K = draw(st.integers(2, 12))
    V = draw(st.integers(2, 12).filter(lambda v: v != K))
    return Draw(
        B=draw(st.integers(1, 2)),
        T=draw(st.one_of(st.sampled_from([1, 2, 3, 63, 64, 65]), st.integers(1, max_T))),
        Hk=draw(st.integers(1, 2)),
        G=draw(st.integers(1, 3)),
        K=K,
        V=V,
        M=draw(st.integers(2, 8)),
        gate_low=draw(st.sampled_from([-1e-4, -0.05, -1.0, -5.0, -30.0])),
        beta_ends=draw(st.booleans()),
        with_state=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make(family: str, d: Draw) -> tuple[list[Tensor], object]:
    """The inputs [q, k, v, *extra] (float32) and an initial state for `family`."""
    gen = torch.Generator().manual_seed(d.seed)
    B, T, Hk, K, V, M = d.B, d.T, d.Hk, d.K, d.V, d.M
    Hq = Hk * d.G
    rand = lambda *shape: torch.randn(*shape, generator=gen)
    gate = lambda *shape: d.gate_low * torch.rand(*shape, generator=gen)
    q, k, v = rand(B, T, Hq, K), rand(B, T, Hk, K), rand(B, T, Hk, V)
    if family == "gla":
        return [q, k, v, gate(B, T, Hk, K)], rand(B, Hk, K, V)
    if family == "simple_gla":
        return [q, k, v, gate(B, T, Hk)], rand(B, Hk, K, V)
    if family == "value_gated_gla":
        return [q, k, v, gate(B, T, Hk, V)], rand(B, Hk, K, V)
    if family == "gsa":
        s = torch.rand(B, T, Hk, M, generator=gen)
        return [q, k, v, s, gate(B, T, Hk, M)], (rand(B, Hk, K, M), rand(B, Hk, M, V))
    beta = 2 * torch.rand(B, T, Hk, generator=gen)
    if d.beta_ends:
        beta[:, ::3] = 0.0
        beta[:, 1::3] = 2.0
    return [q, F.normalize(k, dim=-1), v, gate(B, T, Hk), beta], rand(B, Hk, K, V)


def call(op: Callable, inputs: list[Tensor], h0, **kw):
    o, s = op(*inputs, initial_state=h0, output_final_state=True, **kw)
    return o, flat(s)


def as_state(parts):
    return None if parts is None else (tuple(parts) if len(parts) > 1 else parts[0])


# Every op against its reference


@pytest.mark.parametrize("family", list(FAMILIES))
@MORE
@given(d=draws(), bf16=st.booleans())
def test_ops_match_reference(family, d, bf16):
    fam = FAMILIES[family]
    inputs, h0 = make(family, d)
    h0 = h0 if d.with_state else None
    if bf16:
        inputs = [x.bfloat16() for x in inputs]
        ro, rs = call(fam.reference, inputs, h0)
        for op in (fam.chunk, fam.recurrent):
            o, s = call(op, inputs, h0)
            assert o.dtype == torch.bfloat16 and all(x.dtype == torch.float32 for x in s)
            assert torch.isfinite(o).all() and rel_err(o.float(), ro) < 1e-2, op.__name__
            for a, b in zip(s, rs):
                assert rel_err(a, b) < 1e-3, op.__name__
        return
    inputs = [x.requires_grad_() for x in inputs]
    leaves = inputs + ([x.requires_grad_() for x in flat(h0)] if h0 is not None else [])
    ro, rs = call(fam.reference, inputs, h0)
    gen = torch.Generator().manual_seed(d.seed + 1)
    do, ds = torch.randn(ro.shape, generator=gen), [torch.randn(x.shape, generator=gen) for x in rs]
    loss = lambda o, s: (o * do).sum() + sum((x * y).sum() for x, y in zip(s, ds))
    rgrads = torch.autograd.grad(loss(ro, rs), leaves)
    # a gradient far below float32's resolution of the others (d/dg through decays of e^-30, or exactly 0 at
    # T = 1 without a state) is compared in absolute terms
    floor = 1e-6 * torch.stack([x.norm() for x in rgrads]).norm()
    for op in (fam.chunk, fam.recurrent):
        o, s = call(op, inputs, h0)
        assert_close(o, ro, f"{op.__name__} o")
        for i, (a, b) in enumerate(zip(s, rs)):
            assert_close(a, b, f"{op.__name__} state {i}")
        grads = torch.autograd.grad(loss(o, s), leaves)
        for i, (a, b) in enumerate(zip(grads, rgrads)):
            assert torch.isfinite(a).all(), f"{op.__name__} grad of input {i}"
            err = (a.double() - b).norm()
            assert err <= 5e-3 * b.norm() + floor, f"{op.__name__} grad of input {i}: {err:.2e} vs {b.norm():.2e}"


@FEW
@given(d=draws(max_T=90), window=st.integers(1, 40), pad=st.integers(0, 5), softcap=st.booleans(),
       bf16=st.booleans(), blocks=st.sampled_from([None, 1, 7, 32]))
def test_window_attention_matches_reference(d, window, pad, softcap, bf16, blocks):
    gen = torch.Generator().manual_seed(d.seed)
    B, T, Hk, D = d.B, d.T, d.Hk, d.K
    q, k, v = (torch.randn(B, T, h, D, generator=gen) for h in (Hk * d.G, Hk, Hk))
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[-1, : min(pad, T)] = False  # left padding of the last row
    cap = 5.0 if softcap else None
    if bf16:
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    ref = window_naive.naive_window_attention(q, k, v, window, key_valid=valid, softcap=cap)
    for use_sdpa in (True, False):
        o = window_attention(q, k, v, window, key_valid=valid, block_size=blocks, softcap=cap, use_sdpa=use_sdpa)
        assert o.dtype == q.dtype and torch.isfinite(o).all()
        assert rel_err(o.float(), ref) < (1e-2 if bf16 else 1e-5)
    # decoding token by token from the rolling cache equals the prefill
    past, outs = None, []
    for t in range(T):
        sl = slice(t, t + 1)
        outs.append(window_attention(q[:, sl], k[:, sl], v[:, sl], window, key_valid=valid[:, sl], past=past,
                                     softcap=cap))
        past = roll_window(past, k[:, sl], v[:, sl], valid[:, sl], window)
    assert rel_err(torch.cat(outs, 1).float(), ref) < (1e-2 if bf16 else 1e-5)


@FEW
@given(d=draws(), width=st.integers(1, 5), silu=st.booleans(), bias=st.booleans(), bf16=st.booleans())
def test_causal_conv1d_matches_reference(d, width, silu, bias, bf16):
    gen = torch.Generator().manual_seed(d.seed)
    C = d.K
    x = torch.randn(d.B, d.T, C, generator=gen)
    w, b = torch.randn(C, width, generator=gen), torch.randn(C, generator=gen)
    h0 = torch.randn(d.B, C, width - 1, generator=gen) if d.with_state else None
    if bf16:
        x = x.bfloat16()
    act = "silu" if silu else None
    y, s = causal_conv1d(x, w, b if bias else None, act, h0, True)
    ry, rs = conv_naive.naive_causal_conv1d(x, w, b if bias else None, act, h0, True)
    assert y.dtype == x.dtype and s.dtype == torch.float32
    assert rel_err(y.float(), ry) < (1e-2 if bf16 else 1e-5) and rel_err(s, rs) < 1e-6


# Causality for non-finite inputs


BAD_VALUES = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}


@st.composite
def plants(draw, names: tuple[str, ...], gates: tuple[str, ...], T: int, B: int):
    """(input name, batch row, position, value) of a non-finite value: NaN or +-inf, but only NaN or -inf in a
    gate (+inf is a gate > 0: refused) and only NaN in beta (+-inf is outside [0, 2]: refused)."""
    name = draw(st.sampled_from(names))
    kinds = ["nan", "-inf"] if name in gates else ["nan"] if name == "beta" else list(BAD_VALUES)
    return name, draw(st.integers(0, B - 1)), draw(st.integers(0, T - 1)), BAD_VALUES[draw(st.sampled_from(kinds))]


def plant(x: Tensor, b: int, s: int, value: float, gen: torch.Generator) -> tuple[Tensor, int]:
    """x with `value` at a random head and channel of [b, s]; returns it and the head."""
    x = x.clone()
    h = int(torch.randint(x.shape[2], (1,), generator=gen))
    idx = (b, s, h) + tuple(int(torch.randint(n, (1,), generator=gen)) for n in x.shape[3:])
    x[idx] = value
    return x, h


def check_causal(o: Tensor, prefix: Tensor | None, clean: Tensor, b: int, s: int, heads: list[int], what: str):
    """o: the output with a non-finite input at [b, s]; prefix: the output on the first s tokens; clean: the
    output with no bad value. Before s: finite and unchanged (up to rounding: a chunk's earlier rows may
    round differently when a later input changes). At s: non-finite for `heads` of row b. Other rows of the
    batch: as clean."""
    if prefix is not None:
        assert torch.isfinite(o[:, :s]).all(), f"{what}: a non-finite input reached an earlier output"
        assert_close(o[:, :s].float(), prefix.float(), f"{what}: outputs before the bad value", 1e-4)
    assert not torch.isfinite(o[b, s, heads]).any(), f"{what}: an output at the bad value is finite"
    others = [i for i in range(o.shape[0]) if i != b]
    if others:
        assert_close(o[others].float(), clean[others].float(), f"{what}: other batch rows", 1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
@MORE
@given(d=draws(max_T=150), data=st.data())
def test_non_finite_inputs_reach_no_earlier_output(family, d, data):
    fam = FAMILIES[family]
    inputs, h0 = make(family, d)
    h0 = h0 if d.with_state else None
    names = ("q", "k", "v") + fam.extra
    name, b, s, value = data.draw(plants(names, fam.gates, d.T, d.B))
    i = names.index(name)
    bad = list(inputs)
    bad[i], h = plant(inputs[i], b, s, value, torch.Generator().manual_seed(d.seed))
    heads = [h] if name == "q" else list(range(h * d.G, (h + 1) * d.G))  # the query heads it reaches at s
    with torch.no_grad():
        for op in (fam.chunk, fam.recurrent):
            o, state = call(op, bad, h0)
            clean, _ = call(op, inputs, h0)
            prefix = call(op, [x[:, :s] for x in inputs], h0)[0] if s else None
            check_causal(o, prefix, clean, b, s, heads, f"{op.__name__} {name}[{b}, {s}] = {value}")
            if name != "q":  # an input entering the state: its head's final state is not finite, the others' are
                assert any(not torch.isfinite(x[b, h]).all() for x in state)
                assert all(torch.isfinite(x[:, [j for j in range(x.shape[1]) if j != h]]).all() for x in state)


@FEW
@given(d=draws(max_T=100), window=st.integers(1, 40), data=st.data(), parts=st.booleans())
def test_window_non_finite_inputs_reach_only_their_window(d, window, data, parts):
    gen = torch.Generator().manual_seed(d.seed)
    B, T, Hk = d.B, d.T, d.Hk
    x = [torch.randn(B, T, h, d.K, generator=gen) for h in (Hk * d.G, Hk, Hk)]
    name, b, s, value = data.draw(plants(("q", "k", "v"), (), T, B))
    i = "qkv".index(name)
    bad = list(x)
    bad[i], h = plant(x[i], b, s, value, gen)
    if parts:  # the unnormalised form (LoLCATs): num, den
        op = lambda q, k, v: torch.cat(window_attention_parts(q, k, v, window), -1)
    else:
        op = lambda q, k, v: window_attention(q, k, v, window)
    o, clean = op(*bad), op(*x)
    heads = [h] if name == "q" else list(range(h * d.G, (h + 1) * d.G))
    check_causal(o, op(*[t[:, :s] for t in x]) if s else None, clean, b, s, heads, f"window {name}[{b}, {s}]")
    reached = o[b, :, heads].isnan().any(-1).any(-1).nonzero().flatten().tolist()
    assert reached == ([s] if name == "q" else list(range(s, min(T, s + window))))  # its window, no further
    # at a padding position (invalid key) a bad key or value changes nothing
    if name != "q":
        valid = torch.ones(B, T, dtype=torch.bool)
        valid[b, s] = False
        assert torch.equal(op_valid(window, parts, bad, valid), op_valid(window, parts, x, valid))


def op_valid(window, parts, x, valid):
    if parts:
        return torch.cat(window_attention_parts(*x, window, key_valid=valid), -1)
    return window_attention(*x, window, key_valid=valid)


@FEW
@given(d=draws(max_T=100), data=st.data())
def test_causal_conv1d_non_finite_inputs_reach_no_earlier_output(d, data):
    gen = torch.Generator().manual_seed(d.seed)
    x, w = torch.randn(d.B, d.T, d.K, generator=gen), torch.randn(d.K, 4, generator=gen)
    _, b, s, value = data.draw(plants(("x",), (), d.T, d.B))
    c = data.draw(st.integers(0, d.K - 1))
    bad = x.clone()
    bad[b, s, c] = value
    y = causal_conv1d(bad, w)[0]
    assert torch.equal(y[:, :s], causal_conv1d(x[:, :s], w)[0]) and not torch.isfinite(y[b, s, c])


# The gate contract


@pytest.mark.parametrize("family", list(FAMILIES))
@FEW
@given(d=draws(max_T=70), data=st.data())
def test_out_of_contract_gates_raise_and_finite_inputs_are_unchanged_by_the_check(family, d, data):
    fam = FAMILIES[family]
    inputs, h0 = make(family, d)
    h0 = h0 if d.with_state else None
    names = ("q", "k", "v") + fam.extra
    with torch.no_grad():
        for op in (fam.chunk, fam.recurrent):  # the check changes no bit of a finite input's result
            a, b = call(op, inputs, h0), call(op, inputs, h0, check_inputs=False)
            assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    name = data.draw(st.sampled_from(fam.gates + (("beta",) if "beta" in names else ())))
    if name == "beta":
        value = data.draw(st.sampled_from([-(2.0**-10), -1.0, 2 + 2.0**-10, 3.0, math.inf, -math.inf]))
        rule = r"in \[0, 2\]"
    else:
        value = data.draw(st.sampled_from([2.0**-20, 0.5, 1.0, 50.0, math.inf]))
        rule = "<= 0"
    i = names.index(name)
    bad = list(inputs)
    bad[i], _ = plant(inputs[i], data.draw(st.integers(0, d.B - 1)), data.draw(st.integers(0, d.T - 1)), value,
                      torch.Generator().manual_seed(d.seed))
    if data.draw(st.booleans()):  # a NaN elsewhere does not hide it
        j = names.index(data.draw(st.sampled_from(["q", "k", "v"])))
        bad[j] = bad[j].clone()
        bad[j][0, 0] = math.nan
    for op in (fam.chunk, fam.recurrent):
        with pytest.raises(ValueError, match=rf"^{op.__name__}: {name} must be {rule}.*got {value}"):
            op(*bad, initial_state=h0)


def test_g_gamma_contract():
    q, k, v = torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 3)
    for bad in (0.1, math.inf, -math.inf, math.nan):
        for op in (chunk_simple_gla, fused_recurrent_simple_gla):
            with pytest.raises(ValueError, match="g_gamma must be finite and <= 0"):
                op(q, k, v, g_gamma=torch.tensor([-0.1, bad]))


def test_check_can_be_skipped():
    """check_inputs=False: no check, no host sync; a gate > 0 then runs (and is the caller's problem)."""
    q, k, v = torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 3)
    o, _ = chunk_gla(q, k, v, torch.full((1, 5, 2, 4), 0.1), check_inputs=False)
    assert o.shape == (1, 5, 2, 3)


# T = 0


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("with_state", [False, True])
def test_empty_sequences(family, with_state):
    fam = FAMILIES[family]
    d = Draw(B=2, T=0, Hk=2, G=2, K=4, V=3, M=5, gate_low=-1.0, beta_ends=False, with_state=with_state, seed=0)
    inputs, h0 = make(family, d)
    h0 = tuple(x.bfloat16() for x in flat(h0)) if with_state else None  # the final state is float32 all the same
    for op in (fam.chunk, fam.recurrent):
        o, s = call(op, [x.bfloat16() for x in inputs], as_state(h0))
        assert o.shape == (2, 0, 4, 3) and o.dtype == torch.bfloat16
        want = [x.float() for x in h0] if with_state else [torch.zeros_like(x) for x in s]
        assert all(x.dtype == torch.float32 and torch.equal(x, y) for x, y in zip(s, want))
        o, s = op(*inputs, initial_state=as_state(h0))
        assert o.shape == (2, 0, 4, 3) and s is None


def test_empty_sequences_window_and_conv():
    q, k, v = torch.randn(2, 0, 4, 8), torch.randn(2, 0, 2, 8), torch.randn(2, 0, 2, 5)
    past = (torch.randn(2, 3, 2, 8), torch.randn(2, 3, 2, 5), torch.ones(2, 3, dtype=torch.bool))
    for kw in ({}, {"past": past}, {"use_sdpa": False}, {"softcap": 3.0}):
        assert window_attention(q, k, v, 4, **kw).shape == (2, 0, 4, 5)
    num, den = window_attention_parts(q, k, v, 4, past=past)
    assert num.shape == (2, 0, 4, 5) and den.shape == (2, 0, 4, 1)
    assert all(torch.equal(a, b) for a, b in zip(roll_window(past, k, v, None, 4), past))
    h0 = torch.randn(2, 6, 3)
    y, s = causal_conv1d(torch.randn(2, 0, 6), torch.randn(6, 4), initial_state=h0, output_final_state=True)
    assert y.shape == (2, 0, 6) and torch.equal(s, h0)
