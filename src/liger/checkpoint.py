"""Loading linearized models: `from_pretrained` rebuilds one from the folder `save_pretrained` wrote (every
write atomic, see liger.atomic), in either config.json form (liger.hf_config: the "liger" model type, or the
host model type of folders written before it)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from .config import LigerConfig
from .errors import CheckpointError, ConfigError, LigerError
from .hf_config import MODEL_TYPE, host_config, is_old_form, split_folder_config
from .surgery import linearize


def _load_mixer_parameters(model: torch.nn.Module, path: Path) -> None:
    """Load the tensors that mixers add (feature maps, window factors): transformers' loader does not know
    them, so they are read from the checkpoint's safetensors files after `linearize` has created them."""
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
    source = str(path / "config.json")
    host, entry = split_folder_config(raw, source)
    lcfg = LigerConfig.from_dict(entry, source)
    config = host_config(host, source)
    try:
        lcfg.check_window(getattr(config.get_text_config(), "max_position_embeddings", None))
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}; convert the model again with such a --window") from None
    if is_old_form(raw):
        warnings.warn(
            f"{path} was written by an older liger (config.json says model_type {raw.get('model_type')!r}): "
            "transformers' AutoModelForCausalLM loads such a folder as a plain softmax model. Re-save it to write "
            f"the {MODEL_TYPE!r} model type: liger.from_pretrained(folder).save_pretrained(folder)",
            stacklevel=2,
        )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it would list the mixers' own tensors as unexpected; loaded below
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype or "auto", **kwargs)
    except LigerError:
        raise
    except Exception as e:  # transformers/safetensors raise many types for unreadable weights
        raise CheckpointError(f"cannot load the weights in {path}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    model = linearize(model, lcfg)
    _load_mixer_parameters(model, path)
    if (path / "adapter" / "adapter_config.json").is_file():  # saved with --no-merge
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path / "adapter")
    return model
