"""Atomic output folders: files go to a temporary sibling folder that replaces the target only once complete,
so an interrupted write never leaves a half-written model, checkpoint or report.

One writer at a time writes a given target: a write first removes the temporary siblings a killed earlier
write of the same target left behind (`.<name>.tmp-*`, `.<name>.old-*`), sparing only those whose name
carries the process id of a process still alive on this machine (a concurrent writer there, such as another
process converting the same cached model). Writers on other machines sharing the filesystem are not seen.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import CheckpointError

# Files a save writes; everything else already in the target folder (a tokenizer, a report) is kept.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


def _is_model_file(name: str) -> bool:
    return name in _MODEL_FILES or (name.startswith("model-") and name.endswith(".safetensors"))


def is_liger_checkpoint(path: str | os.PathLike) -> bool:
    cfg = Path(path) / "config.json"
    try:
        return cfg.is_file() and "liger" in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


def check_writable(target: str | os.PathLike, what: str = "--out") -> None:
    """Raise CheckpointError (naming `what` and the path) unless a folder `target` could be written: its nearest
    existing ancestor is a writable folder, and `target` itself is a folder if it exists (holding no model that
    is not a liger checkpoint, which `atomic_output_dir` would refuse to replace). Creates nothing; call it
    before any long work whose result goes to `target`."""
    target = Path(target).expanduser().absolute()
    _check_replaceable(target, f"{what} {target}")
    parent = target
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or _is_pseudo_fs(parent):
        raise CheckpointError(f"{what} {target} cannot be written ({parent} is not a writable folder); "
                              "choose an output path in a folder you can write")


def _check_replaceable(target: Path, name: str) -> None:
    """Refuse a `target` that is a file, or a folder holding a model that is not a liger checkpoint."""
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{name} exists and is not a folder; choose another output path")
    if target.is_dir() and not is_liger_checkpoint(target) and any(_is_model_file(p.name) for p in target.iterdir()):
        raise CheckpointError(f"{name} holds a model that is not a liger checkpoint; refusing to overwrite it. "
                              "Choose another output folder.")


def _is_pseudo_fs(path: Path) -> bool:
    """/proc and /sys accept no new files even for root (os.access says yes there)."""
    return path.parts[1:2] in (("proc",), ("sys",))


def _tag() -> str:
    """The suffix of a temporary sibling: this process's id (see `remove_stale_siblings`) and a random part."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _writer_alive(suffix: str) -> bool:
    """Whether a temporary sibling's suffix ("<pid>-<random>"; older names have no pid) names a live process
    other than this one."""
    pid, sep, _ = suffix.partition("-")
    if not (sep and pid.isdigit()) or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to another user
        return True
    return True


def remove_stale_siblings(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders (`.<name>.tmp-*`, `.<name>.old-*`) that an interrupted write of `target`
    left beside it, except those of a writer still running on this machine; returns what was removed."""
    target = Path(target).expanduser().absolute()
    removed = []
    for kind in ("tmp", "old"):
        prefix = f".{target.name}.{kind}-"
        for path in target.parent.glob(f"{glob.escape(prefix)}*") if target.parent.is_dir() else ():
            if path.is_dir() and not path.is_symlink() and not _writer_alive(path.name[len(prefix):]):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike, keep_other_files: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` (keeping, if
    `keep_other_files`, files of the old folder that the new one does not write, such as a tokenizer), on
    error it is removed.

    Refuses to replace a folder holding a model that is not a liger checkpoint. First removes what a killed
    earlier write of `target` left beside it (`remove_stale_siblings`: one writer at a time per target)."""
    target = Path(target).expanduser().absolute()
    _check_replaceable(target, str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(target)
    tmp = target.parent / f".{target.name}.tmp-{_tag()}"
    tmp.mkdir()
    try:
        yield tmp
        if target.is_dir():
            for old in target.iterdir() if keep_other_files else ():
                if not _is_model_file(old.name) and not (tmp / old.name).exists():
                    (shutil.copytree if old.is_dir() else shutil.copy2)(old, tmp / old.name)
            trash = target.parent / f".{target.name}.old-{_tag()}"
            os.rename(target, trash)
            os.rename(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside the file `path`; on success it replaces `path` (so a kill mid-write
    leaves the old file or the new one, never half of one), on error it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{_tag()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
