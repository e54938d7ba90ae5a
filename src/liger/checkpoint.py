"""Saving and loading linearized models. Every write is atomic: files go to a temporary sibling folder that
replaces the target only once complete, so an interrupted save never leaves a half-written checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

from .config import LigerConfig
from .errors import CheckpointError, LigerError

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


def _load_mixer_parameters(model: torch.nn.Module, path: Path) -> None:
    """Load the tensors that mixers add (feature maps, window factors): transformers' loader does not know
    them, so they are read from the checkpoint's safetensors files after `linearize` has created them."""
    from safetensors import safe_open

    own = {n: p for n, p in model.named_parameters() if ".core." in n}
    if not own:
        return
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    found: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            found.update({k: f.get_tensor(k) for k in f.keys() if k in own})
    missing = sorted(set(own) - set(found))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} mixer tensors (e.g. {missing[0]}); the checkpoint is incomplete")
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(found[n])


def from_pretrained(path: str | os.PathLike, dtype: torch.dtype | str | None = None, **kwargs) -> torch.nn.Module:
    """Rebuild a linearized model from a folder written by `save_pretrained`, from that folder alone."""
    from transformers import AutoModelForCausalLM

    from .surgery import linearize

    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass the folder written by `liger convert` or `linearize`")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a model folder (no config.json)")
    try:
        raw = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON ({e}); the checkpoint is corrupted") from None
    if "liger" not in raw:
        raise CheckpointError(
            f"{path} is a model folder but not a liger checkpoint (its config.json has no 'liger' entry); "
            f"convert it first: liger convert --model {path} --out DIR"
        )
    lcfg = LigerConfig.from_dict(raw["liger"])
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it would list the mixers' own tensors as unexpected; loaded below
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", **kwargs)
    except LigerError:
        raise
    except Exception as e:  # transformers/safetensors raise many types for unreadable weights
        raise CheckpointError(f"cannot load the weights in {path}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    del model.config.liger
    model = linearize(model, lcfg)
    _load_mixer_parameters(model, path)
    if (path / "adapter" / "adapter_config.json").is_file():  # saved with --no-merge
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path / "adapter")
    return model
