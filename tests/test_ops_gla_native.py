"""The C++ forward of chunk_gla (liger/ops/csrc/chunk_gla.cpp, built on first use) against the PyTorch form
and the float64 reference; which calls reach it; and the fallback rule (no compiler, a failed build,
LIGER_NO_EXTENSIONS=1: the PyTorch form, with a warning once naming the reason).

The first run builds the extension (~10-60 s, cached in TORCH_EXTENSIONS_DIR); with a compiler present a
failed build fails these tests instead of falling back silently."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err
from torch.utils.flop_counter import FlopCounterMode

from liger.ops import chunk_gla
from liger.ops import extension
from liger.ops.gla import FLOAT32_SPAN, GATE_FLOOR, gated_chunk_len, last_chunk_gla_path, native_gla
from liger.ops.gla_naive import naive_recurrent_gla

NAME = "liger_gla"


@pytest.fixture(scope="module")
def native():
    """The loaded extension; skips the module's native tests where no compiler is present."""
    if extension.compiler() is None:
        pytest.skip("no C++ compiler: only the fallback is tested")
    ext = native_gla()
    assert ext is not None, f"the C++ chunk_gla did not build: {extension.unavailable_reason(NAME)}"
    return ext


def inputs(B, T, Hq, Hk, K, V, seed=0, gate_low=-1.0):
    """q, k, v, g, h0 (float32); gates uniform in [gate_low, 0]: -1 keeps every within-chunk span <= 32
    (the float32 route)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hq, K, generator=gen)
    k = torch.randn(B, T, Hk, K, generator=gen)
    v = torch.randn(B, T, Hk, V, generator=gen)
    g = gate_low * torch.rand(B, T, Hk, K, generator=gen)
    h0 = torch.randn(B, Hk, K, V, generator=gen)
    return q, k, v, g, h0


def torch_form(*args, **kwargs):
    """chunk_gla's PyTorch form (LIGER_NO_EXTENSIONS=1 for the call)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(extension.ENV_OFF, "1")
        out = chunk_gla(*args, **kwargs)
    assert last_chunk_gla_path() == "torch"
    return out


@pytest.mark.parametrize("T", [1, 40, 64, 100, 257])
@pytest.mark.parametrize("heads", [(3, 3), (9, 3)], ids=["G1", "G3"])
@pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
def test_native_matches_pytorch_form_and_reference(native, T, heads, with_state):
    Hq, Hk = heads
    q, k, v, g, h0 = inputs(2, T, Hq, Hk, 64, 65, seed=T)  # V = 65: values with the normaliser's ones column
    h0 = h0 if with_state else None
    with torch.no_grad():
        o, s = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
        assert last_chunk_gla_path() == "native"
        to, ts = torch_form(q, k, v, g, initial_state=h0, output_final_state=True)
        ro, rs = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    assert o.shape == (2, T, Hq, 65) and o.dtype == torch.float32 and s.shape == (2, Hk, 64, 65)
    assert rel_err(o, to) < 1e-5 and rel_err(s, ts) < 1e-5
    assert rel_err(o, ro) < 1e-5 and rel_err(s, rs) < 1e-5


def test_native_scale_default_state_only_when_asked_and_strided_inputs(native):
    """Default scale K^-0.5, no final state unless asked, and inputs that are views: transposed q, k and v
    slices of one tensor, a gate expanded over the key channels (stride 0: copied first)."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 9, 130, 32, generator=gen).transpose(1, 2)  # [B, T, Hq, K], T-stride 32
    kv = torch.randn(1, 130, 3, 2, 32, generator=gen)
    k, v = kv[..., 0, :], kv[..., 1, :]
    g = (-torch.rand(1, 130, 3, 1, generator=gen)).expand(1, 130, 3, 32)
    with torch.no_grad():
        o, s = chunk_gla(q, k, v, g)
        assert last_chunk_gla_path() == "native" and s is None
        to, _ = torch_form(q, k, v, g)
        ro, _ = naive_recurrent_gla(q, k, v, g)
    assert rel_err(o, to) < 1e-5 and rel_err(o, ro) < 1e-5


@pytest.mark.parametrize("step", [0.9, 1.6])  # within-chunk spans ~29 (float32 route) and ~51 (float64)
def test_span_beyond_float32_runs_the_float64_route(native, step):
    """The native forward declines (ok = False) exactly when the PyTorch form would switch to float64; the
    call then runs the PyTorch form, still equal to the reference."""
    q, k, v, _, h0 = inputs(1, 200, 4, 2, 16, 16, seed=5)
    g = -step * torch.rand(1, 200, 2, 16, generator=torch.Generator().manual_seed(6)) * 2
    C = gated_chunk_len(200, 64)
    *_, ok = native.chunk_gla_fwd(q, k, v, g, 0.25, h0, C, FLOAT32_SPAN, float(GATE_FLOOR))
    assert ok == (step < 1)
    with torch.no_grad():
        o, s = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
        assert last_chunk_gla_path() == ("native" if step < 1 else "torch")
        ro, rs = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    assert rel_err(o, ro) < 1e-4 and rel_err(s, rs) < 1e-4


def test_non_finite_inputs_keep_the_contract(native):
    """A NaN in v: the value check zeroes it and poisons the outputs from its position on, as the PyTorch form."""
    q, k, v, g, h0 = inputs(1, 150, 6, 2, 16, 16, seed=7)
    v[0, 90, 1, 3] = float("nan")
    with torch.no_grad():
        o, s = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
        assert last_chunk_gla_path() == "native"
        to, ts = torch_form(q, k, v, g, initial_state=h0, output_final_state=True)
    assert torch.equal(o.isnan(), to.isnan()) and torch.equal(s.isnan(), ts.isnan())
    # key head 1 feeds query heads 3-5 (G = 3): those, from token 90 on
    assert o[:, :90].isfinite().all() and o[:, 90:, 3:].isnan().all() and o[:, :, :3].isfinite().all()
    fin = o.isfinite()
    assert rel_err(o[fin], to[fin]) < 1e-5


def test_threads_do_not_change_the_result(native):
    q, k, v, g, h0 = inputs(1, 700, 9, 3, 64, 64, seed=8)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True))
    finally:
        torch.set_num_threads(threads)
    (o1, s1), (o2, s2) = outs
    assert rel_err(o2, o1) < 1e-6 and rel_err(s2, s1) < 1e-6


def test_routes_to_native_only_without_a_gradient_to_record(native):
    q, k, v, g, h0 = inputs(2, 130, 4, 2, 16, 12, seed=9)
    chunk_gla(q, k, v, g, initial_state=h0)  # grad mode on, but nothing requires a gradient
    assert last_chunk_gla_path() == "native"
    leaves = [x.clone().requires_grad_() for x in (q, k, v, g, h0)]
    o, s = chunk_gla(*leaves[:4], initial_state=leaves[4], output_final_state=True)
    assert last_chunk_gla_path() == "torch" and o.requires_grad
    ro, rs = naive_recurrent_gla(*leaves[:4], initial_state=leaves[4], output_final_state=True)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((o * do).sum() + s.sum(), leaves)
    rgrads = torch.autograd.grad((ro * do.double()).sum() + rs.sum(), leaves)
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        assert rel_err(a, b) < 5e-3, name
    with torch.no_grad():
        chunk_gla(*leaves[:4], initial_state=leaves[4])
    assert last_chunk_gla_path() == "native"
    with torch.inference_mode():
        chunk_gla(q, k, v, g)
    assert last_chunk_gla_path() == "native"


def test_other_dtypes_and_dispatch_modes_run_the_pytorch_form(native):
    q, k, v, g, _ = inputs(1, 70, 2, 1, 16, 16, seed=10)
    with torch.no_grad():
        chunk_gla(q.bfloat16(), k.bfloat16(), v.bfloat16(), g.bfloat16())
        assert last_chunk_gla_path() == "torch"
        with FlopCounterMode(display=False) as counter:  # counts the PyTorch form's matmuls
            chunk_gla(q, k, v, g)
        assert last_chunk_gla_path() == "torch" and counter.get_total_flops() > 0


# The fallback rule


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """The loader as in a new process, with an empty extension cache (TORCH_EXTENSIONS_DIR); restored after."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    extension._reset_for_tests()
    yield
    extension._reset_for_tests()


def _fallback_calls(q, k, v, g, h0):
    """Two chunk_gla calls without grad; returns their results and the RuntimeWarnings they raised."""
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        results = [chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True) for _ in range(2)]
        assert last_chunk_gla_path() == "torch"
    return results, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_without_a_compiler_the_pytorch_form_runs_and_warns_once(fresh_loader, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.delenv(extension.ENV_OFF, raising=False)
    q, k, v, g, h0 = inputs(1, 100, 6, 2, 16, 16, seed=11)
    results, warned = _fallback_calls(q, k, v, g, h0)
    assert native_gla() is None and "no C++ compiler" in extension.unavailable_reason(NAME)
    assert len(warned) == 1 and "PyTorch path" in str(warned[0].message)
    assert "no C++ compiler" in str(warned[0].message)
    ro, rs = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    for o, s in results:
        assert rel_err(o, ro) < 1e-5 and rel_err(s, rs) < 1e-5


def test_a_failed_build_gives_none_and_warns_once_with_the_compiler_output(fresh_loader, tmp_path):
    """A source that does not compile (another extension: liger_gla's library may already be loaded here)."""
    if extension.compiler() is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "broken.cpp"
    src.write_text("this is not C++;\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert extension.load_extension("liger_broken_test", [src]) is None
        assert extension.load_extension("liger_broken_test", [src]) is None  # not retried, not warned again
    (w,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert "liger_broken_test" in str(w.message) and "broken.cpp" in str(w.message)


def test_env_switch_forces_the_pytorch_form_silently(fresh_loader, monkeypatch):
    monkeypatch.setenv(extension.ENV_OFF, "1")
    q, k, v, g, h0 = inputs(1, 100, 6, 2, 16, 16, seed=12)
    results, warned = _fallback_calls(q, k, v, g, h0)
    assert not warned and native_gla() is None and extension.unavailable_reason(NAME) == f"{extension.ENV_OFF} is set"
    ro, _ = naive_recurrent_gla(q, k, v, g, initial_state=h0)
    assert rel_err(results[0][0], ro) < 1e-5


def test_cpu_tag_names_the_build_for_this_machine():
    tag = extension.cpu_tag()
    assert tag == extension.cpu_tag() and (tag == "generic" or len(tag) == 10)
