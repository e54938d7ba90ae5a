"""Peak resident memory (RSS) of this process over a block of code, on CPU where torch keeps no allocator
statistics.

Method: collect garbage and return freed heap pages to the OS (glibc `malloc_trim`), then on Linux reset the
kernel's RSS high-water mark (`echo 5 > /proc/self/clear_refs`) and read it back afterwards (`VmHWM` in
/proc/self/status): exact, whatever the allocation pattern. Where that is unavailable, a thread samples RSS
every 2 ms with psutil (may miss peaks shorter than that). `extra` = peak - RSS at the start: the memory the
block itself needed (activations, cache, workspace) on top of the loaded models.
"""

from __future__ import annotations

import ctypes
import gc
import re
import threading
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _rss() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


class PeakRSS:
    """Context manager: `with PeakRSS() as m: ...`, then `m.peak` and `m.start` (bytes), `m.extra`
    (peak - start) and `m.method` ("vmhwm" or "sampled")."""

    def __enter__(self) -> "PeakRSS":
        _trim()
        self.method = "vmhwm" if _reset_hwm() else "sampled"
        self.start = _rss()
        self.peak = self.start
        if self.method == "sampled":
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        if self.method == "vmhwm":
            self.peak = max(self.start, (_status_kib("VmHWM") or 0) * 1024)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())

    @property
    def extra(self) -> int:
        return self.peak - self.start
