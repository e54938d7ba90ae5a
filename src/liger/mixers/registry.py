"""Which core each `LigerConfig.mixer` names: the one table of mixers."""

from __future__ import annotations

from ..config import LigerConfig
from .base import MixerCore
from .delta import GatedDeltaNetCore
from .gla import GLACore, HGRN2Core, RetentionCore, SimpleGLACore
from .gsa import GSACore
from .lawcat import LawcatCore
from .lolcats import LolcatsCore

CORES: dict[str, type[MixerCore]] = {
    "gla": GLACore,
    "hgrn2": HGRN2Core,
    "simple_gla": SimpleGLACore,
    "retention": RetentionCore,
    "lolcats": LolcatsCore,
    "gsa": GSACore,
    "gated_deltanet": GatedDeltaNetCore,
    "lawcat": LawcatCore,
}


def build_core(config: LigerConfig, num_heads: int, num_kv_heads: int, head_dim: int) -> MixerCore:
    """The core of `config.mixer` for a layer with these head counts and head dimension."""
    return CORES[config.mixer](config, num_heads, num_kv_heads, head_dim)
