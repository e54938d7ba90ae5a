"""Optional C++ kernels of liger.ops, built on first use with `torch.utils.cpp_extension.load` and cached.

    load_extension(name, sources, openmp=False, required=()) -> namespace of ops | None
    extensions_disabled() -> bool          # LIGER_NO_EXTENSIONS=1 (or true/yes/on)
    unavailable_reason(name) -> str | None # why load_extension(name, ...) returned None, if it did

The sources live in liger/ops/csrc/ (shipped as package data). Each registers its ops with TORCH_LIBRARY, so
the result is the `torch.ops.<name>` namespace (ops as attributes, like a module). Every op with a C++
kernel keeps its pure-PyTorch path, which runs instead, with a warning once naming the reason, when:

- LIGER_NO_EXTENSIONS=1 (read at every call: a process can switch it; no warning),
- no C++ compiler is found (`CXX`, else `c++`, as torch.utils.cpp_extension uses) or no ninja,
- the build or the load fails (e.g. a torch build whose headers or symbols differ).

The first use builds (~10-60 s, once; `logging` at INFO says so); later processes load the cached library
from TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions). Flags: -O3, and on x86-64 -march=native, which
is safe only because the build directory's name carries a hash of this CPU's model and feature flags (and of
torch's version, `cpu_tag`): a cache shared with, or copied to, another machine makes that machine build its
own copy instead of loading code for instructions it may lack.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shlex
import shutil
import threading
import warnings
from pathlib import Path

import torch

ENV_OFF = "LIGER_NO_EXTENSIONS"
CSRC = Path(__file__).parent / "csrc"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict[str, object] = {}  # name -> torch.ops namespace
_libraries: dict[str, object] = {}  # the same, never forgotten: a loaded library cannot be unloaded
_failed: dict[str, str] = {}  # name -> why it is unavailable (then the PyTorch path, for the process)
_warned: set[str] = set()


def extensions_disabled() -> bool:
    """Whether LIGER_NO_EXTENSIONS asks for the pure-PyTorch paths."""
    return os.environ.get(ENV_OFF, "").strip().lower() in ("1", "true", "yes", "on")


def compiler() -> str | None:
    """The C++ compiler torch.utils.cpp_extension would run (`CXX`, else `c++`), if it exists."""
    cxx = os.environ.get("CXX", "").strip() or "c++"
    return shutil.which(shlex.split(cxx)[0])


def cpu_tag() -> str:
    """A short hash of this CPU (model and feature flags, from /proc/cpuinfo on Linux), the machine type and
    torch's version, or "generic" where the CPU cannot be identified."""
    ident = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        keep = ("model name", "flags", "Features", "CPU part", "CPU implementer")
        ident = "\n".join(sorted({ln.strip() for ln in info.splitlines() if ln.split(":")[0].strip() in keep}))
    except OSError:
        pass
    if not ident:
        return "generic"
    raw = "\n".join((platform.machine(), ident, torch.__version__))
    return hashlib.sha1(raw.encode()).hexdigest()[:10]


def _flags(openmp: bool) -> tuple[list[str], list[str], str]:
    tag = cpu_tag()
    cflags = ["-O3"]
    if tag != "generic" and platform.machine().lower() in ("x86_64", "amd64"):
        cflags.append("-march=native")  # safe: the build directory is named after this CPU (see cpu_tag)
    ldflags: list[str] = []
    if openmp:  # at::parallel_for is inline: without -fopenmp it would run on one thread
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags, tag


def unavailable_reason(name: str) -> str | None:
    """Why `load_extension(name, ...)` gives None in this process (LIGER_NO_EXTENSIONS, no compiler, a failed
    build), or None if it loaded or was not tried yet."""
    if extensions_disabled():
        return f"{ENV_OFF} is set"
    return _failed.get(name)


def _unavailable(name: str, reason: str) -> None:
    _failed[name] = reason
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"liger: C++ kernel {name!r} unavailable, using the PyTorch path: {reason}", RuntimeWarning,
                      stacklevel=4)
    return None


def load_extension(name: str, sources: list[str | Path], openmp: bool = False, required: tuple[str, ...] = ()):
    """Build (first use) or load the C++ extension `name` from `sources` (file names in liger/ops/csrc/, or
    absolute paths). Returns `torch.ops.<name>` (the sources' TORCH_LIBRARY namespace must be `name`), or
    None: with a warning once naming the reason (no compiler, no ninja, a failed build or load, an op of
    `required` missing), or silently under LIGER_NO_EXTENSIONS=1.

    `openmp`: compile with -fopenmp, needed for at::parallel_for to use torch's threads (only if torch itself
    runs on OpenMP). The result is cached for the process; a failure is not retried."""
    if extensions_disabled():
        return None
    if name in _loaded:
        return _loaded[name]
    if name in _failed:
        return None
    with _lock:
        if name in _loaded or name in _failed:
            return _loaded.get(name)
        cxx = compiler()
        if cxx is None:
            return _unavailable(name, f"no C++ compiler found ({os.environ.get('CXX') or 'c++'}; set CXX to one)")
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            return _unavailable(name, "ninja is not installed (pip install ninja)")
        if name in _libraries:  # loaded earlier in this process: loading it again (or a rebuilt copy, which
            _loaded[name] = _libraries[name]  # cpp_extension names name_v1 when its inputs changed) would
            return _loaded[name]  # register its TORCH_LIBRARY namespace twice, which aborts
        cflags, ldflags, tag = _flags(openmp and torch.backends.openmp.is_available())
        build = f"{name}_{tag}"
        paths = [str(CSRC / s) for s in sources]  # (an absolute path replaces CSRC)
        _log.info("liger: loading C++ kernel %s (built on first use, once; cached under TORCH_EXTENSIONS_DIR)", name)
        try:
            cpp_extension.load(build, paths, extra_cflags=cflags, extra_ldflags=ldflags, is_python_module=False,
                               verbose=False)
            ops = getattr(torch.ops, name)
            for op in required:
                getattr(ops, op)  # raises if the library did not register it
        except Exception as e:  # a failed build (compiler errors in the message), or a load that failed
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            reason = f"{type(e).__name__}: " + " | ".join(lines[-6:])
            return _unavailable(name, reason[:2000])
        _loaded[name] = _libraries[name] = ops
        return ops


def _reset_for_tests() -> None:
    """Forget loads, failures and warnings, as in a new process (the tests re-run the fallback rule in one
    process). A library already loaded stays loaded (and is reused once the checks pass again)."""
    _loaded.clear()
    _failed.clear()
    _warned.clear()
