"""The tests every op with a chunked and a token-by-token path passes against its float64 reference (outputs,
final states, gradients, odd lengths, carried states, bf16, extreme gates, bad shapes), written once.

A test file subclasses `OpTests` (or `GatedOpTests` for ops with a decay gate) with `case` set to the op's
`Case`: its two paths, its reference and a function making random inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err

TOL = 5e-3
Tensor = torch.Tensor


def log_gate(gen: torch.Generator, shape: tuple[int, ...], value: float | None) -> Tensor:
    """Log decays from ~0 to very negative, or a constant."""
    if value is not None:
        return torch.full(shape, value)
    return F.logsigmoid(torch.randn(shape, generator=gen) * 3)


@dataclass
class Case:
    chunk: Callable
    recurrent: Callable
    reference: Callable
    make: Callable
    kwargs: dict = field(default_factory=dict)


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


class OpTests:
    """The chunked and the token-by-token path of `case` against its reference."""

    case: Case

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _one_thread(cls):
        """The references and decode paths loop over tokens on tiny tensors, where intra-op threads cost more
        than they give (10x slower on a busy 2-core machine)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    @pytest.mark.parametrize("T", [1, 63, 64, 65, 300])
    @pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
    def test_matches_reference_outputs_states_and_grads(self, T, with_state):
        case = self.case
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

    def test_split_sequence_with_carried_state_equals_one_call(self):
        """Prefill in two chunked calls, or chunked prefill then token-by-token decode: the same as one call."""
        case = self.case
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

    def test_bf16_inputs_accumulate_in_float32(self):
        case = self.case
        inputs, h0 = case.make(1, 130, torch.Generator().manual_seed(5))
        inputs = [x.bfloat16() for x in inputs]
        ro, rs = run(case.reference, case, inputs, h0)
        for op in (case.chunk, case.recurrent):
            o, s = run(op, case, inputs, h0)
            assert o.dtype == torch.bfloat16 and all(x.dtype == torch.float32 for x in s)
            assert rel_err(o.float(), ro) < 1e-2
            for a, b in zip(s, rs):
                assert rel_err(a, b) < 1e-3


class GatedOpTests(OpTests):
    """`OpTests`, plus the gate extremes and the shape checks of the recurrences with a decay gate (`case.make`
    takes `heads` (Hq, Hk) and a constant `gate`)."""

    @pytest.mark.parametrize("gate", [-20.0, 0.0])
    def test_long_sequence_extreme_gates_are_finite_and_exact(self, gate):
        case = self.case
        inputs, _ = case.make(1, 8192, torch.Generator().manual_seed(2), heads=(1, 1), gate=gate)
        with torch.no_grad():
            ro, rs = run(case.reference, case, inputs, None)
            for op in (case.chunk, case.recurrent):
                o, s = run(op, case, inputs, None)
                assert_close(o, ro, f"{op.__name__} o")
                for i, (a, b) in enumerate(zip(s, rs)):
                    assert_close(a, b, f"{op.__name__} state {i}")

    @pytest.mark.parametrize("gate", [-20.0, 0.0, -1e4])
    def test_extreme_gates_gradients(self, gate):
        """Constant gates at the extremes (and far beyond -20: the log decays of pretrained keys can be huge):
        finite outputs and gradients, equal to the reference's."""
        case = self.case
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

    def test_bad_shapes_raise(self):
        case = self.case
        inputs, h0 = case.make(1, 8, torch.Generator().manual_seed(9), heads=(3, 2))
        with pytest.raises(ValueError, match="multiple"):
            case.chunk(*inputs)
        inputs, h0 = case.make(1, 8, torch.Generator().manual_seed(9))
        bad = tuple(x[..., :-1] for x in flat(h0))
        with pytest.raises(ValueError, match="initial_state"):
            case.chunk(*inputs, initial_state=bad if len(bad) > 1 else bad[0])
