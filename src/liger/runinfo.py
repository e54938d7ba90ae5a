"""What a report records about its run: the machine (CPU from /proc/cpuinfo, cores, GPU, torch and its
threads), the date and the command. The one place that reads /proc/cpuinfo."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

CPUINFO = "/proc/cpuinfo"


def read_cpuinfo(path: str | os.PathLike = CPUINFO) -> str:
    """The text of /proc/cpuinfo; empty where unreadable."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_flags(path: str | os.PathLike = CPUINFO) -> set[str]:
    """The CPU's feature flags (x86 "flags", Arm "Features"); empty where unreadable."""
    return {f for line in read_cpuinfo(path).splitlines() if line.startswith(("flags", "Features")) and ":" in line
            for f in line.split(":", 1)[1].split()}


def cpu_model(path: str | os.PathLike = CPUINFO) -> str:
    """The CPU's model name (else platform's description)."""
    for line in read_cpuinfo(path).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, cores, torch version and threads, the device the work runs on, Python's version."""
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "python": platform.python_version(),
    }


def machine(info: dict | None = None) -> str:
    """One line (the benchmarks' and `liger linearize`'s): CPU, cores or GPU, torch version, threads."""
    m = info or machine_info()
    dev = m["device"] if m["device"] != "cpu" else f"{m['cores']} CPU cores"
    return f"{m['cpu']}, {dev}, torch {m['torch']}, {m['threads']} threads"


def machine_in_words(info: dict | None = None) -> str:
    """One line (`liger eval`'s): CPU model (and GPU if any), core count, torch version and its thread count."""
    m = info or machine_info()
    gpu = f", {m['device']}" if m["device"] != "cpu" else ""
    return f"{m['cpu']}, {m['cores']} cores{gpu}, torch {m['torch']} ({m['threads']} threads)"


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, shell-quoted, the program by its file name (default `sys.argv`)."""
    argv = sys.argv if argv is None else argv
    return " ".join(shlex.quote(a) for a in [Path(argv[0]).name, *argv[1:]])


def now(zone: bool = False) -> str:
    """The local date and time, "YYYY-MM-DD HH:MM" (with `zone`, and the time zone's name)."""
    if zone:
        return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def header(command: str | None = None) -> dict:
    """Date, machine (a line and its parts) and the exact command (default: this process's argv)."""
    info = machine_info()
    return {"date": now(), "machine": machine(info), "machine_info": info,
            "command": command_line() if command is None else command}
