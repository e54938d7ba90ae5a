"""A fused single-token decode step for the gated linear mixers (gla, hgrn2, simple_gla, retention): the whole
arithmetic of one layer's step (feature maps and gates, the in-place state update, the output and its
normaliser, RoPE, the window softmax over the cache's ring, the mix, the ring-slot write) as one
`torch.compile`d graph (inductor's C++ backend, CPU only), instead of ~25 eagerly dispatched operators. The
cache bookkeeping (ring position, token count) stays outside, in Python (`GLACore.decode_step`).

API (process-wide, off by default: compiling costs seconds, paid on the first step of each new shape)::

    set_enabled(True) -> str | None         # or LIGER_FUSED_DECODE=1; set_enabled(None) follows the env again;
                                            # returns why the step cannot run (None: it can)
    is_enabled() -> bool
    fused_decode_unavailable(device="cpu") -> str | None   # why it cannot run there; None when it can
    fused_decode_step(q, k, v, state, ring, ring_pos, construct, rope, mix, scale, normalize) -> Tensor | None
    reset()                                 # forget compiled steps and failures (e.g. after installing g++)

`GLACore.decode_step` calls `fused_decode_step` when switched on and the layer has a window, and runs its
eager path when it returns None: switched off, not a CPU, no C++ compiler (inductor looks for CXX when it is
imported, else g++), or a compilation that failed for any reason; the last two warn once with the reason, and
a failed compilation switches the path off for the process. `decode_step` is the same function uncompiled.

One graph serves every layer and step: the per-layer tensors are inputs, the ring slot is an int64 tensor,
the cache tensors are passed with contiguous strides (`_canonical`), and the guards read only what the
layers share (the core's construct function and config, the host's RoPE function, scale and mix floats). Each
(construct, normalize, window, mix kind) gets its own compiled copy; it compiles once per batch size, dtype,
grad/inference mode and host architecture, up to `torch._dynamo.config.recompile_limit` (8) variants, beyond
which dynamo runs the step uncompiled (correct, slower, with its own warning).

Measured (2-core shared x86 CPU, bundled 135M linearized with the default gla, window 64, float32, one
thread, CPU time, medians of interleaved runs): one layer's step 220 -> 107 us at batch 1 (gla, hgrn2,
simple_gla, retention alike), 820 -> 450 us at batch 8; the model's decode step at 512 context 64.5 -> 61.1 ms
at batch 1, 141.8 -> 135.4 ms at batch 8. Of the ~107 us, ~20 us are the kernel, the rest torch.compile's
per-call cost (guards, wrappers, buffer allocation). First use compiles in ~3 s with inductor's on-disk cache
warm, ~15-25 s cold. Without a window the eager step (~10 operators) is as fast as a compiled call, so
`GLACore.decode_step` keeps it eager there.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable

import torch

Tensor = torch.Tensor
ENV = "LIGER_FUSED_DECODE"
EPS = 1e-6  # added to the normaliser q'z: liger.mixers.gla.EPS (ops do not import mixers; a test compares)

# Inductor options for the step. reorder_for_locality off: that pass moves the ring write before the ring's
# reads, and inductor then copies the whole ring twice per step instead of writing one slot in place.
# cpp.threads 1: a decode step is a few microseconds of arithmetic, less than OpenMP's fork/join (and far less
# than its spin-waits on a loaded machine). cpp_wrapper (the wrapper in C++) saved ~18 us per call of ~95 but
# doubled the compile time, so it is not used.
OPTIONS = {"reorder_for_locality": False, "cpp.threads": 1}

_enabled: bool | None = None  # None: read ENV
_unavailable: dict[str, str | None] = {}  # device type -> why not (None: available); a failed compile lands here
_warned: set[str] = set()
_compiled: dict[tuple, Callable] = {}
_slots: dict[tuple, list[Tensor]] = {}
_strides: dict[torch.Size, tuple[int, ...]] = {}


def set_enabled(on: bool | None) -> str | None:
    """Switch the fused step on or off for the process; None: follow LIGER_FUSED_DECODE again. Switching it
    on returns why it cannot run on the CPU (`fused_decode_unavailable`), None when it can."""
    global _enabled
    _enabled = on
    return fused_decode_unavailable() if on else None


def is_enabled() -> bool:
    """Whether decode steps try the fused path (`set_enabled`, else LIGER_FUSED_DECODE=1/true/yes/on)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def fused_decode_unavailable(device: torch.device | str = "cpu") -> str | None:
    """Why the fused step cannot run on `device` (not a CPU, no C++ compiler for inductor, an earlier
    compilation that failed, ...), or None when it can. Looked up once per device type (`reset` forgets it)."""
    kind = torch.device(device).type
    if kind not in _unavailable:
        _unavailable[kind] = _why_not(kind)
    return _unavailable[kind]


def _why_not(kind: str) -> str | None:
    if kind != "cpu":  # inductor would emit Triton there; that path is neither measured nor tested
        return f"the fused decode step is built and tested for CPU only, not {kind}"
    try:
        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python/platform"
        from torch._inductor import config
        from torch._inductor.cpp_builder import cpp_compiler_search

        search = tuple(config.cpp.cxx) if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
        try:  # inductor's own lookup: config.cpp.cxx, from CXX when torch._inductor was imported, else g++
            cpp_compiler_search(search)
        except Exception:
            names = ", ".join(str(c) for c in search if c is not None)
            return f"no C++ compiler for torch.compile on CPU (tried {names}; set CXX to one)"
    except Exception as e:  # a broken torch._inductor / _dynamo install
        return f"torch.compile is unusable: {type(e).__name__}: {e}"
    return None


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"liger: fused decode step unavailable, decoding eagerly: {reason}", RuntimeWarning,
                      stacklevel=3)


def _slot(pos: int, length: int, device: torch.device) -> Tensor:
    """The ring slot `pos` as an int64 tensor [1] (made once per device and ring length): a tensor input, so
    that the compiled step does not specialise on the position."""
    key = (device, length)
    if key not in _slots:
        _slots[key] = [torch.tensor([i], device=device) for i in range(length)]
    return _slots[key][pos]


def _canonical(t: Tensor) -> Tensor:
    """t, or, when t is contiguous but a size-1 dimension has another stride (a B = 1 cache sliced from a
    prefill: its batch stride is the prompt length times the row), a view of it with contiguous strides; the
    compiled step's guards compare strides, so that stride would make it recompile for every prompt length."""
    strides = _strides.get(t.shape)
    if strides is None:
        strides = _strides[t.shape] = torch.empty(t.shape, device="meta").stride()
    if t.stride() == strides or not t.is_contiguous():
        return t
    return t.as_strided(t.shape, strides)


def decode_step(q: Tensor, k: Tensor, v: Tensor, state: Tensor, ring: tuple[Tensor, Tensor, Tensor] | None,
                pos: Tensor | None, construct: Callable, rope: Callable, mix: tuple, scale: float,
                normalize: bool) -> Tensor:
    """One token of a gated linear mixer with its window, writing `state` and the ring slot `pos` in place.

    q [B, 1, Hq, D], k and v [B, 1, Hk, D] (before RoPE, any float dtype); state float32 [B, Hk, D, D (+1 with
    `normalize`)]; ring: the cache's (k, v, valid) [B, W - 1, Hk, D] / [B, W - 1] or None (no window); pos: int64
    [1], the ring's oldest slot; construct(q, k) -> (q', k', g) float32 with g [B, 1, Hk, D] or [B, 1, Hk];
    rope(q, k) -> RoPE'd (q, k); mix: the (window, linear) weights, floats or [Hq, 1] tensors.
    Returns o float32 [B, 1, Hq, D]: mix[0] * window + mix[1] * linear (the linear part alone without a ring).
    The arithmetic of `GLACore.decode_step` (gla_step, normalized, window_step, push_window), fusable."""
    B, _, Hq, D = q.shape
    Hk = k.shape[2]
    qf, kf, g = (t[:, 0] for t in construct(q.float(), k.float()))
    if g.dim() == 2:  # one decay per head: the same for every key channel
        g = g[..., None]
    vf = v[:, 0].float()
    if normalize:  # values [v, 1]: the state's last column is the normaliser z
        vf = torch.cat([vf, vf.new_ones(B, Hk, 1)], -1)
    state.copy_(state * g.exp().unsqueeze(-1) + kf.unsqueeze(-1) * vf.unsqueeze(-2))
    # q S as a broadcast sum, not a matmul: one generated loop instead of a BLAS call on [G, D] x [D, D + 1]
    o = (qf.reshape(B, Hk, -1, D, 1) * state[:, :, None]).sum(-2)  # [B, Hk, G, D(+1)]
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + EPS)
    o = o.reshape(B, Hq, -1)
    if ring is None:
        return o[:, None]
    # Softmax over the W - 1 ring keys and the new one, written out (no cat of the ring, no SDPA call) so
    # that inductor fuses it; the ring is read before its oldest slot is overwritten below.
    rk, rv, rvalid = ring
    qr, kr = rope(q, k)
    qg = qr[:, 0].float().view(B, Hk, -1, D)  # [B, Hk, G, D]
    kn, vn = kr[:, 0].to(rk.dtype), v[:, 0].to(rv.dtype)  # as stored in the ring
    s_ring = (qg[:, None] * rk.float()[:, :, :, None]).sum(-1) * scale  # [B, W - 1, Hk, G]
    s_ring = s_ring.masked_fill(~rvalid[:, :, None, None], float("-inf"))
    s_new = (qg * kn.float()[:, :, None]).sum(-1)[:, None] * scale  # [B, 1, Hk, G]
    p = torch.softmax(torch.cat([s_ring, s_new], 1), 1)
    L = rk.shape[1]
    o_win = (p[:, :L, ..., None] * rv.float()[:, :, :, None]).sum(1) + p[:, L, ..., None] * vn.float()[:, :, None]
    a, b = mix
    o = a * o_win.reshape(B, Hq, -1) + b * o
    rk[:, pos] = kn[:, None]  # index_put_: inductor writes the one slot in place (index_copy_ copies the ring)
    rv[:, pos] = vn[:, None]
    rvalid[:, pos] = True
    return o[:, None]


def _compiled_step(key: tuple) -> Callable:
    """A compiled copy of `decode_step` for one (construct, normalize, window, mix kind): a fresh code object,
    so that its cache entries and recompile limit are its own (dynamo keys them on the code)."""
    if key not in _compiled:
        code = decode_step.__code__.replace()
        fn = types.FunctionType(code, decode_step.__globals__, decode_step.__name__)
        _compiled[key] = torch.compile(fn, fullgraph=True, dynamic=False, options=OPTIONS)
    return _compiled[key]


def fused_decode_step(q: Tensor, k: Tensor, v: Tensor, state: Tensor, ring: tuple[Tensor, Tensor, Tensor] | None,
                      ring_pos: int, construct: Callable, rope: Callable, mix: tuple, scale: float,
                      normalize: bool) -> Tensor | None:
    """`decode_step` compiled (arguments as there; `ring_pos` the cache's Python int), or None without running
    anything when the fused path is switched off or unavailable on q's device (the caller then runs its eager
    path; the reason is warned once). A compilation that fails disables the path on that device type."""
    if not is_enabled():
        return None
    kind = q.device.type
    reason = _unavailable[kind] if kind in _unavailable else fused_decode_unavailable(kind)
    if reason is not None:
        _warn_once(reason)
        return None
    if ring is not None:
        pos = _slot(ring_pos, ring[0].shape[1], ring[0].device)
        ring = tuple(_canonical(t) for t in ring)
    else:
        pos = None
    key = (getattr(construct, "__func__", construct), normalize, ring is not None, isinstance(mix[0], Tensor))
    try:
        return _compiled_step(key)(q, k, v, _canonical(state), ring, pos, construct, rope, mix, scale, normalize)
    except Exception as e:
        # A failure is a compilation's, before the graph runs: state and ring are untouched, the eager step
        # takes this token.
        _unavailable[kind] = f"torch.compile failed: {type(e).__name__}: {_first_line(e)}"
        _warn_once(_unavailable[kind])
        return None


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0].strip()[:300] if lines else ""


def reset() -> None:
    """Forget compiled steps, the availability lookups, failures and warnings."""
    _unavailable.clear()
    _warned.clear()
    _compiled.clear()
    _slots.clear()
    _strides.clear()
