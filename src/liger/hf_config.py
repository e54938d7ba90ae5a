"""The config.json of a liger folder: its own model type, with the host model's config carried as data.

    {"model_type": "liger", "architectures": ["LigerForCausalLM"],
     "auto_map": {"AutoConfig": "modeling_liger.LigerModelConfig",
                  "AutoModelForCausalLM": "modeling_liger.LigerForCausalLM"},
     "host": {the host's own config.json: "model_type": "llama", "architectures": ["LlamaForCausalLM"], ...},
     "liger": {LigerConfig.to_dict()}}

Transformers without liger does not know "liger", so it refuses the folder instead of loading the trained
weights as a plain softmax model; with liger imported (liger.hf_auto registers the type) or with
`trust_remote_code=True` (the `modeling_liger.py` written beside config.json imports liger) it loads the
linearized model. One form for every host architecture: the host stays data (`host`), read back with the
host's own config class.

Folders written before this form ("version 0": the host's config.json with a "liger" entry added) still load
through `liger.from_pretrained`, which reads both forms (`split_folder_config`); writing one again gives the
new form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import CONFIG_MAPPING, PreTrainedConfig

from .errors import CheckpointError

MODEL_TYPE = "liger"
ARCHITECTURE = "LigerForCausalLM"
REMOTE_CODE_FILE = "modeling_liger.py"
AUTO_MAP = {
    "AutoConfig": "modeling_liger.LigerModelConfig",
    "AutoModelForCausalLM": f"modeling_liger.{ARCHITECTURE}",
}

# The file written beside config.json for `trust_remote_code=True`. Transformers checks the imports of a remote
# file and names a missing package itself, but skips imports inside `try`: so the message below is the one seen.
REMOTE_CODE = '''"""A liger model folder (a causal LM linearized by liger: config.json "model_type": "liger").

transformers loads it through this file with `trust_remote_code=True`; the model code is liger's own, imported
here. With liger installed, `import liger` is enough (no remote code needed). Written by liger; do not edit."""

try:
    from liger.hf_auto import LigerForCausalLM, LigerModelConfig
except ImportError as e:
    if getattr(e, "name", None) not in ("liger", "liger.hf_auto"):
        raise  # liger is installed but one of its own imports failed: that error says what is missing
    raise ImportError(
        "This folder holds a liger model (a causal LM linearized by liger), and loading it needs the liger "
        "package, which is not installed (or too old to have liger.hf_auto). Install it from a checkout of the "
        "liger project: "
        "pip install -e /path/to/liger (distribution name 'liger'; not the unrelated 'liger-kernel'). "
        "Then `import liger` and load the folder with transformers' Auto classes or liger.from_pretrained."
    ) from e

__all__ = ["LigerModelConfig", "LigerForCausalLM"]
'''


class LigerModelConfig(PreTrainedConfig):
    """The config of a liger folder (model_type "liger"): `host` is the host model's config dict (its own
    model_type and sizes), `liger` the LigerConfig dict. `host_config()` gives the host's config object, which
    is what a loaded model's `model.config` is (with `.liger`)."""

    model_type = MODEL_TYPE
    host: dict | None = None
    liger: dict | None = None

    def host_config(self) -> PreTrainedConfig:
        """The host's transformers config, with the linearization under `.liger` (as a loaded model has it)."""
        config = host_config(self.host or {}, f"the {MODEL_TYPE} config")
        config.liger = self.liger
        return config


def host_config(host: dict[str, Any], source: str) -> PreTrainedConfig:
    """The host's transformers config from its config dict (`host` of the new form, or an old folder's
    config.json less "liger"); CheckpointError naming `source` if transformers does not know its model type."""
    mtype = host.get("model_type") if isinstance(host, dict) else None
    if mtype not in CONFIG_MAPPING:
        raise CheckpointError(
            f"{source}: the host model type {mtype!r} is unknown to transformers (or missing); the folder is damaged "
            "or needs a newer transformers"
        )
    try:
        return CONFIG_MAPPING[mtype].from_dict(dict(host))
    except Exception as e:  # transformers' strict config validation raises several types
        raise CheckpointError(f"{source}: the host model's config is invalid ({e}); the folder is damaged") from e


def is_old_form(raw: dict[str, Any]) -> bool:
    """Whether a config.json dict is a liger folder of the old form (host model_type plus a "liger" entry)."""
    return "liger" in raw and raw.get("model_type") != MODEL_TYPE


def split_folder_config(raw: dict[str, Any], source: str) -> tuple[dict[str, Any], Any]:
    """(host config dict, "liger" entry) of a liger folder's config.json dict, in either form."""
    if raw.get("model_type") == MODEL_TYPE:
        host = raw.get("host")
        if not isinstance(host, dict):
            raise CheckpointError(f"{source}: a {MODEL_TYPE} config needs a \"host\" object (the host model's "
                                  "config); the folder is damaged: convert the model again")
        return host, raw.get("liger")
    return {k: v for k, v in raw.items() if k != "liger"}, raw.get("liger")


def folder_config(raw: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The new-form config.json dict of a liger folder from its config dict in either form (what a host
    model's own save_pretrained writes for a linearized model is the old form)."""
    host, liger = split_folder_config(raw, source)
    out = {"model_type": MODEL_TYPE, "architectures": [ARCHITECTURE], "auto_map": dict(AUTO_MAP),
           "host": host, "liger": liger}
    for key in ("transformers_version", "dtype"):  # for readers of the top level; the host's copy is the one used
        if key in host:
            out[key] = host[key]
    return out


def write_folder_config(folder: str | Path) -> None:
    """Rewrite `folder`'s config.json (as a host model's save_pretrained wrote it, "liger" entry included) in
    the new form, and write the remote-code file beside it. For a folder being written (not yet in place)."""
    folder = Path(folder)
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps(folder_config(raw, str(path)), indent=2, sort_keys=True) + "\n")
    (folder / REMOTE_CODE_FILE).write_text(REMOTE_CODE)
