"""Find the attention modules of a Hugging Face causal LM and replace them in place with Liger Attention."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .arch import arch_spec, decoder_layers
from .atomic import atomic_output_dir
from .config import LigerConfig, config_of
from .errors import ConfigError
from .hf_config import write_folder_config
from .mixers import LigerAttention

def linearized_layer_indices(model: nn.Module) -> list[int]:
    return [i for i, layer in enumerate(decoder_layers(model)) if isinstance(layer.self_attn, LigerAttention)]


def _capture_padding(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook on the base model: pass the 2-D padding mask down to the mixers as `liger_valid`
    (transformers forwards extra keyword arguments from the model to every attention module)."""
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and "liger_valid" not in kwargs:
        if not bool(mask.all()):
            kwargs["liger_valid"] = mask.bool()
    return args, kwargs


class LigerModelMixin:
    """Mixed into the class of a linearized model: atomic `save_pretrained` and `liger_config`."""

    @property
    def liger_config(self) -> LigerConfig:
        return config_of(self)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Like transformers' save_pretrained (safetensors, generation_config.json), but atomic (the folder is
        written beside the target and swapped in only once complete, see liger.atomic), and config.json takes
        the "liger" model type with the host's config inside, plus the remote-code file (liger.hf_config)."""
        with atomic_output_dir(save_directory) as tmp:
            super().save_pretrained(tmp, *args, **kwargs)
            if (tmp / "config.json").is_file():
                write_folder_config(tmp)


_CLASSES: dict[type, type] = {}


def _liger_class(cls: type) -> type:
    if issubclass(cls, LigerModelMixin):
        return cls
    if cls not in _CLASSES:
        # Same name and module as the host class: the saved host config's "architectures" names the host class,
        # and transformers' pipelines treat the model as the host's.
        _CLASSES[cls] = type(cls.__name__, (LigerModelMixin, cls), {"__module__": cls.__module__})
    return _CLASSES[cls]


def linearize(model: nn.Module, config: LigerConfig | None = None) -> nn.Module:
    """Replace every attention module of `model` (except `config.softmax_layers`) by Liger Attention, in
    place, reusing the pretrained q/k/v/o weights: no new parameters, no copies. Returns the same model,
    whose config now records the linearization under `config.liger` (saved in config.json)."""
    config = config or LigerConfig()
    spec = arch_spec(model)
    if getattr(model.config, "liger", None) is not None:
        raise ConfigError("this model is already linearized (its config has a 'liger' entry)")
    layers = decoder_layers(model)
    config.check_layers(len(layers))
    keep = config.softmax_layer_set(len(layers))
    for i, layer in enumerate(layers):
        if i not in keep:
            attn = LigerAttention(layer.self_attn, spec, config, i)
            attn.core.to(next(layer.parameters()).device)  # the mixer's own parameters, if any, join the model
            layer.self_attn = attn
    base = getattr(model, "base_model", model)
    if not getattr(base, "_liger_hooked", False):
        base.register_forward_pre_hook(_capture_padding, with_kwargs=True)
        base._liger_hooked = True
    model.config.liger = config.to_dict()
    model.__class__ = _liger_class(type(model))
    return model


def reconfigure(model: nn.Module, *, softmax_layers: tuple[int, ...] | None = None,
                sparse_cache: int | None = None) -> nn.Module:
    """Change a linearized model in place without retraining: `softmax_layers` also turns these linearized
    layers back into the host's softmax attention (its own class, on the layer's current projection weights,
    with its growing KV cache); `sparse_cache` sets the sparse cache's budget M of every linearized layer
    (0: off). The model's config records the result (saved by save_pretrained). Returns the same model."""
    config = config_of(model)
    if config is None:
        raise ConfigError("reconfigure takes a linearized model (liger.linearize or liger.from_pretrained)")
    layers = decoder_layers(model)
    restore = sorted(set(softmax_layers or ()))
    bad = [i for i in restore if not 0 <= i < len(layers)]
    if bad:
        raise ConfigError(f"softmax_layers {bad} out of range: the model has {len(layers)} layers "
                          f"(indices 0..{len(layers) - 1})")
    new = config
    if sparse_cache is not None:
        new = dataclasses.replace(new, sparse_cache=sparse_cache)
    new = dataclasses.replace(new, softmax_layers=tuple(sorted(set(new.softmax_layers) | set(restore))))
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        if not isinstance(attn, LigerAttention):
            continue
        if i in restore:
            with torch.device("meta"):
                host = attn.host_class(attn.config, i)
            for name in attn.spec.projections():
                setattr(host, name, getattr(attn, name))
            layer.self_attn = host
        else:
            attn.liger = attn.core.config = new
    model.config.liger = new.to_dict()
    return model
