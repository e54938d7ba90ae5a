"""The compiled single-token decode step (liger.ops.fused_decode) against the eager one (GLACore.decode_step),
and its fallback to the eager step when no C++ compiler is there or compiling fails."""

import copy
import warnings

import pytest
import torch
from conftest import tiny_model
from torch._dynamo.utils import counters

import liger
from liger.cache import CACHE_KWARG, output_cache
from liger.mixers import gla
from liger.mixers.gla import GLACore
from liger.ops import fused_decode as fd

needs_compiler = pytest.mark.skipif(fd.fused_decode_unavailable() is not None,
                                    reason=f"fused decode unavailable: {fd.fused_decode_unavailable()}")


@pytest.fixture(autouse=True)
def _switch_restored():
    yield
    fd.set_enabled(None)


def _model(mixer="gla", window=64, normalize=None, learnable_mix=False):
    model = liger.linearize(tiny_model("llama", layers=2), liger.LigerConfig(
        mixer=mixer, window=window, normalize=normalize, learnable_mix=learnable_mix))
    with torch.no_grad():  # per-head mixing weights away from their initial values
        for m in model.modules():
            if isinstance(getattr(m, "mix", None), torch.nn.Parameter):
                m.mix.uniform_(0.1, 1.0, generator=torch.Generator().manual_seed(7))
    return model


def _decode(model, ids, prefill, fused):
    """Logits [B, T, V] of `ids`: a prefill, then one token per step with the fused step on or off; the cache."""
    fd.set_enabled(fused)
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True)
        cache, logits = output_cache(out), [out.logits]
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t : t + 1], **{CACHE_KWARG: cache}, use_cache=True)
            logits.append(out.logits)
    fd.set_enabled(None)
    return torch.cat(logits, 1), cache


def _ids(B, T, seed=0):
    return torch.randint(0, 128, (B, T), generator=torch.Generator().manual_seed(seed))


def _fused_calls(monkeypatch):
    """A list that records, for each decode step of a layer, whether the compiled step served it."""
    calls = []
    step = fd.fused_decode_step

    def counted(*args):
        o = step(*args)
        calls.append(o is not None)
        return o

    monkeypatch.setattr(fd, "fused_decode_step", counted)
    return calls


@needs_compiler
@pytest.mark.parametrize("mixer, window, normalize, learnable_mix, B", [
    ("gla", 64, True, False, 1),
    ("gla", 64, True, False, 2),
    ("gla", 64, False, False, 2),
    ("gla", 0, True, False, 2),
    ("gla", 0, False, False, 2),
    ("hgrn2", 64, True, True, 2),
    ("simple_gla", 64, True, False, 2),
    ("retention", 64, True, False, 2),
])
def test_fused_step_equals_the_eager_step(mixer, window, normalize, learnable_mix, B, monkeypatch):
    """One step of a layer after a 40-token prefill (the ring part valid, part empty): the same output, state
    and ring (written in place, in the same tensors) as the eager step, in float32."""
    model = _model(mixer, window, normalize, learnable_mix)
    ids = _ids(B, 41)
    with torch.no_grad():
        cache = output_cache(model(ids[:, :40], use_cache=True))
    captured = []
    step = GLACore.decode_step
    monkeypatch.setattr(GLACore, "decode_step", lambda self, q, k, v, rope, scale, c: captured.append(
        (self, q, k, v, rope, scale, copy.deepcopy(c))) or step(self, q, k, v, rope, scale, c))
    with torch.no_grad():
        model(ids[:, 40:], **{CACHE_KWARG: cache}, use_cache=True)
    monkeypatch.undo()
    core, q, k, v, rope, scale, before = captured[-1]
    eager, fused = copy.deepcopy(before), copy.deepcopy(before)
    with torch.no_grad():
        fd.set_enabled(False)
        o_eager = core.decode_step(q, k, v, rope, scale, eager)
        fd.set_enabled(True)
        tensors = (fused.state, *(fused.ring or ()))
        ptrs = [t.data_ptr() for t in tensors]
        o_fused = fd.fused_decode_step(q, k, v, fused.state, fused.ring, fused.ring_pos, core.construct, rope,
                                       core.mix_weights(), scale, core.config.normalize)
    assert fd.EPS == gla.EPS
    assert o_fused is not None and o_fused.shape == o_eager.shape == (B, 1, 4, 16)
    torch.testing.assert_close(o_fused, o_eager, rtol=1e-5, atol=1e-5)
    assert [t.data_ptr() for t in tensors] == ptrs  # written in place
    torch.testing.assert_close(fused.state, eager.state, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused.state, before.state)
    if window:  # the same ring slot (the oldest, `ring_pos`) overwritten by the new key and value
        for a, b in zip(fused.ring, eager.ring):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert bool(fused.ring[2][:, before.ring_pos].all()) and not bool(before.ring[2][:, before.ring_pos].any())


@needs_compiler
def test_prefill_then_fused_decode_equals_full_forward(monkeypatch):
    """Prefill + 70 fused steps (the 63-slot ring wraps) == one full forward; one compiled graph serves every
    layer, step and prompt length (no recompilation per layer, per ring slot or per prefill stride)."""
    model = _model()
    calls, new_graphs = _fused_calls(monkeypatch), []
    for prefill, T in ((20, 90), (100, 110)):  # the cache's B = 1 strides differ with the prompt length
        ids = _ids(1, T, seed=prefill)
        with torch.no_grad():
            full = model(ids).logits
        graphs = counters["stats"]["unique_graphs"]
        fused, cache = _decode(model, ids, prefill, fused=True)
        new_graphs.append(counters["stats"]["unique_graphs"] - graphs)
        torch.testing.assert_close(fused, full, rtol=1e-4, atol=1e-4)
        assert cache.layers[0].ring_pos == (T - prefill) % 63 and cache.get_seq_length() == T
    assert len(calls) == 2 * (70 + 10) and all(calls)
    assert new_graphs[0] <= 1 and new_graphs[1] == 0  # compiled at most once (earlier tests may have)


@pytest.fixture
def no_compiler(monkeypatch):
    """Inductor's C++ compiler made a path that does not exist, as on a machine without one; the fused step's
    process state fresh."""
    from torch._inductor import config
    from torch._inductor.cpp_builder import cpp_compiler_search

    for name, fresh in (("_unavailable", {}), ("_warned", set()), ("_compiled", {})):
        monkeypatch.setattr(fd, name, fresh)
    with config.patch({"cpp.cxx": (None, "/nonexistent/bin/g++")}):
        cpp_compiler_search.cache_clear()  # inductor caches its lookup
        yield
    cpp_compiler_search.cache_clear()


def _decode_warned(model, ids, prefill):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits, _ = _decode(model, ids, prefill, fused=True)
    return logits, [str(w.message) for w in caught if "fused decode" in str(w.message)]


def test_without_a_compiler_decoding_falls_back_to_eager(no_compiler, monkeypatch):
    reason = fd.fused_decode_unavailable("cpu")
    assert reason is not None and "C++ compiler" in reason and "/nonexistent/bin/g++" in reason
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled without a compiler"))
    model, ids = _model(), _ids(2, 30)
    eager, _ = _decode(model, ids, 20, fused=False)
    fused, messages = _decode_warned(model, ids, 20)
    assert messages == [f"liger: fused decode step unavailable, decoding eagerly: {reason}"]  # once, for 20 calls
    torch.testing.assert_close(fused, eager, rtol=0, atol=0)


def test_a_failing_compilation_falls_back_to_eager(no_compiler, monkeypatch, tmp_path):
    """The compiler lookup passes but compiling fails (no compiler, empty inductor caches): a warning with the
    reason, the eager step from the first call on (the state not touched by the failed attempt), no retry."""
    from torch._functorch import config as functorch_config
    from torch._inductor import config

    monkeypatch.setattr(fd, "_why_not", lambda kind: None)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing compiled earlier to load
    with config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        model, ids = _model(), _ids(3, 24)  # batch 3: no other test compiles its kernels in this process
        eager, _ = _decode(model, ids, 20, fused=False)
        fused, messages = _decode_warned(model, ids, 20)
    assert len(messages) == 1 and "torch.compile failed" in messages[0], messages
    assert fd.fused_decode_unavailable("cpu").startswith("torch.compile failed")
    torch.testing.assert_close(fused, eager, rtol=0, atol=0)


def test_the_switch(monkeypatch):
    monkeypatch.delenv(fd.ENV, raising=False)
    assert not fd.is_enabled()
    monkeypatch.setenv(fd.ENV, "1")
    assert fd.is_enabled()
    fd.set_enabled(False)
    assert not fd.is_enabled()
    fd.set_enabled(None)
    monkeypatch.setenv(fd.ENV, "0")
    assert not fd.is_enabled()
    # off (the default): decoding compiles nothing
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled with the switch off"))
    monkeypatch.setattr(fd, "_compiled", {})
    model, ids = _model(), _ids(1, 24)
    with torch.no_grad():
        out = model(ids[:, :20], use_cache=True)
        for t in range(20, 24):
            out = model(ids[:, t : t + 1], **{CACHE_KWARG: output_cache(out)}, use_cache=True)
    assert fd._compiled == {}
