"""Atomic output folders: files go to a temporary sibling folder that replaces the target only once complete,
so an interrupted write never leaves a half-written model, checkpoint or report."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike, keep_other_files: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` (keeping, if
    `keep_other_files`, files of the old folder that the new one does not write, such as a tokenizer), on
    error it is removed.

    Refuses to replace a folder holding a model that is not a liger checkpoint."""
    target = Path(target).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target} exists and is not a folder; choose another output path")
    if target.is_dir() and not is_liger_checkpoint(target) and any(_is_model_file(p.name) for p in target.iterdir()):
        raise CheckpointError(
            f"{target} holds a model that is not a liger checkpoint; refusing to overwrite it. "
            "Choose another output folder."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if target.is_dir():
            for old in target.iterdir() if keep_other_files else ():
                if not _is_model_file(old.name) and not (tmp / old.name).exists():
                    (shutil.copytree if old.is_dir() else shutil.copy2)(old, tmp / old.name)
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, trash)
            os.rename(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
