"""Load any causal LM the CLI is pointed at: a liger checkpoint, a Hugging Face folder or hub id, or the
bundled teacher ("bundled")."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .atomic import is_liger_checkpoint
from .checkpoint import from_pretrained
from .errors import CheckpointError, LigerError
from .hf_config import LigerModelConfig
from .teacher import BUNDLED, resolve_model_path


def _looks_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.rstrip(os.sep) and Path(spec).parent.exists()


def read_config(spec: str):
    """The transformers config of `spec` ("bundled", a model folder, or a hub id already in the local cache),
    read without the weights and without the network (a liger folder: its host's config, with `.liger`); None
    when it cannot be read so (a load reports why).
    For the checks made before anything loads (`--window` against the context limit, memory estimates)."""
    try:
        path = resolve_model_path(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        # a liger folder: its host's config with .liger, as the loaded model's config will be
        return config.host_config() if isinstance(config, LigerModelConfig) else config
    except Exception:  # a missing folder, an unknown hub id offline, a broken config.json: the load says which
        return None


def max_positions(config) -> int | None:
    """The context limit (max_position_embeddings) of a transformers config, None if it states none."""
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def check_finite(model: torch.nn.Module, spec: str) -> None:
    """Raise CheckpointError if a weight of `model` holds NaN or infinite values (a diverged training run or a
    damaged file): such a model generates nothing sensible and evaluates to perplexity nan. One pass over the
    weights (about 0.1 s for 135M parameters)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.device.type != "meta" and not torch.isfinite(p).all():
                raise CheckpointError(
                    f"the weights of {spec} hold NaN or infinite values (first in {name}); the model is broken "
                    "(training diverged or a file is damaged): use an earlier checkpoint, or train again with a "
                    "lower --lr"
                )


def check_logits(logits: torch.Tensor, spec: str) -> None:
    """Raise CheckpointError if `logits` (of a first forward pass) hold NaN or +inf values (-inf may be a
    masked token)."""
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise CheckpointError(
            f"{spec} computes NaN or infinite logits although its weights are finite (a numeric overflow, e.g. "
            "in float16); load it in float32, or use an earlier checkpoint"
        )


def load_model(spec: str, dtype: torch.dtype | str | None = None, require_liger: bool = False, empty: bool = False,
               finite: bool = False):
    """(model, tokenizer) from a liger checkpoint, a model folder, a hub id or "bundled".

    empty: build the architecture without reading the weights: parameters on the meta device (buffers such
    as RoPE frequencies real, tied weights tied), for the ranks of a sharded run that receive their shards
    from rank 0 (`liger.distributed.sharding.shard_frozen`). Liger checkpoints always load whole.
    finite: check that every weight is finite (`check_finite`)."""
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
    if finite:
        check_finite(model, spec)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer of {spec!r}: {e}") from e
    return model.eval(), tok
