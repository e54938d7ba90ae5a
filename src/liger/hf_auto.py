"""transformers' Auto classes and pipelines load liger folders: `import liger` registers the "liger" model type.

    import liger
    model = AutoModelForCausalLM.from_pretrained("out")       # the linearized model, as liger.from_pretrained
    pipe = pipeline("text-generation", model="out")           # likewise
    AutoConfig.from_pretrained("out").host_config()           # the host's config (e.g. LlamaConfig) with .liger

`LigerForCausalLM` is a loader, not a model class: its `from_pretrained` is `liger.from_pretrained`, its
`_from_config` builds the host model and linearizes it, and both return the host's own class linearized in
place (e.g. a LlamaForCausalLM whose attentions are LigerAttention). Why not a wrapper PreTrainedModel holding
the host: everything that reads a model (surgery, cache, training, LoRA targets, evaluation, transformers'
generate and pipelines) expects the host's `model.config`, state-dict names and class, and a wrapper would
change all three, or duplicate them; the loader gives the Auto classes the very object liger.from_pretrained
gives, for every host architecture with one implementation. Folders of the old form (host model_type) still
load as softmax models through the Auto classes, even with liger imported: transformers reads their
model_type and never asks liger. Only liger.from_pretrained (which warns) and re-saving fix them.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .checkpoint import from_pretrained
from .config import LigerConfig
from .errors import ConfigError
from .hf_config import ARCHITECTURE, MODEL_TYPE, LigerModelConfig, host_config
from .surgery import linearize


class LigerForCausalLM:
    """The architecture of a liger folder ("architectures": ["LigerForCausalLM"]) for transformers' Auto
    classes; never instantiated (see the module docstring)."""

    config_class = LigerModelConfig

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError(f"{ARCHITECTURE} is a loader: use {ARCHITECTURE}.from_pretrained(folder), "
                        "AutoModelForCausalLM.from_pretrained(folder) or liger.from_pretrained(folder)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args,
                        config: LigerModelConfig | None = None, **kwargs) -> torch.nn.Module:
        """The linearized model of a liger folder (`liger.from_pretrained`); `config` (what the Auto classes
        read from the folder) is not needed: the folder is read again. Other keyword arguments (dtype,
        device_map, ...) go to the host model's from_pretrained."""
        if model_args:
            raise TypeError(f"{ARCHITECTURE}.from_pretrained takes no positional model arguments")
        for key in ("adapter_kwargs", "_from_auto"):  # the Auto class's own bookkeeping
            kwargs.pop(key, None)
        return from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_config(cls, config: LigerModelConfig, **kwargs) -> torch.nn.Module:
        """A freshly initialised host model of `config`'s host, linearized (AutoModelForCausalLM.from_config)."""
        if not isinstance(config, LigerModelConfig):
            raise ConfigError(f"{ARCHITECTURE} needs a {LigerModelConfig.__name__}, got {type(config).__name__}")
        host = host_config(config.host or {}, f"the {MODEL_TYPE} config")
        model = AutoModelForCausalLM.from_config(host, **kwargs)
        return linearize(model, LigerConfig.from_dict(config.liger, f"the {MODEL_TYPE} config"))

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoModelForCausalLM") -> None:
        """Nothing to record: the folder's auto_map is written by liger's save_pretrained."""


def register() -> None:
    """Register the "liger" model type with AutoConfig and AutoModelForCausalLM (idempotent; done on import)."""
    AutoConfig.register(MODEL_TYPE, LigerModelConfig, exist_ok=True)
    AutoModelForCausalLM.register(LigerModelConfig, LigerForCausalLM, exist_ok=True)


register()
