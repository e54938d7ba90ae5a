"""Load any causal LM the CLI is pointed at: a liger checkpoint, a Hugging Face folder or hub id, or the
bundled teacher ("bundled")."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .atomic import is_liger_checkpoint
from .checkpoint import from_pretrained
from .errors import CheckpointError, LigerError
from .teacher import BUNDLED, resolve_model_path


def _looks_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.rstrip(os.sep) and Path(spec).parent.exists()


def load_model(spec: str, dtype: torch.dtype | str | None = None, require_liger: bool = False, empty: bool = False):
    """(model, tokenizer) from a liger checkpoint, a model folder, a hub id or "bundled".

    empty: build the architecture without reading the weights: parameters on the meta device (buffers such
    as RoPE frequencies real, tied weights tied), for the ranks of a sharded run that receive their shards
    from rank 0 (`liger.distributed.sharding.shard_frozen`). Liger checkpoints always load whole."""
    path = resolve_model_path(spec)
    local = Path(path).expanduser()
    if spec != BUNDLED and not local.exists() and (_looks_local(spec) or require_liger):
        raise CheckpointError(f"{spec} does not exist; pass a model folder, a hub id or 'bundled'")
    if require_liger or is_liger_checkpoint(local):
        model = from_pretrained(local, dtype=dtype)
    else:
        try:
            if empty:
                with init_empty_weights(include_buffers=False):
                    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
                model.tie_weights()  # init_empty_weights registers tied parameters separately
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
        except LigerError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot load a causal LM from {spec!r}: {e}") from e
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer of {spec!r}: {e}") from e
    return model.eval(), tok
