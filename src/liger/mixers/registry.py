"""Which core each `LigerConfig.mixer` names: the one table of mixers."""

from __future__ import annotations

from ..config import LigerConfig
from .base import MixerCore
from .delta import GatedDeltaNetCore
from .gla import GLACore, HGRN2Core, RetentionCore, SimpleGLACore
from .gsa import GSACore
from .lawcat import LawcatCore
from .lolcats import LolcatsCore
from .native_gdn import NativeGDNCore

CORES: dict[str, type[MixerCore]] = {
    "gla": GLACore,
    "hgrn2": HGRN2Core,
    "simple_gla": SimpleGLACore,
    "retention": RetentionCore,
    "lolcats": LolcatsCore,
    "gsa": GSACore,
    "gated_deltanet": GatedDeltaNetCore,
    "lawcat": LawcatCore,
    "native_gdn": NativeGDNCore,
}


def build_core(config: LigerConfig, num_heads: int, num_kv_heads: int, head_dim: int, host_config=None) -> MixerCore:
    """The core of `config.mixer` for a layer with these head counts and head dimension; a core that reads the
    layer's input (`uses_hidden`) also gets the host's hidden size and RMSNorm epsilon from `host_config`."""
    cls = CORES[config.mixer]
    if getattr(cls, "uses_hidden", False):
        return cls(config, num_heads, num_kv_heads, head_dim, hidden_size=host_config.hidden_size,
                   eps=getattr(host_config, "rms_norm_eps", 1e-6))
    return cls(config, num_heads, num_kv_heads, head_dim)
