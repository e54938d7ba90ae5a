"""nn.Modules built on liger.ops that replace a host model's softmax attention, reusing its projections.

`LigerAttention` (attention.py) is the one wrapper for every architecture; it hands q, k, v to a core, one
per mixer (registry.py maps `LigerConfig.mixer` to it): base.py (the window branch, the mix, the kernel
choice), gla.py (gla, hgrn2, simple_gla, retention), gsa.py, delta.py (gated_deltanet), lawcat.py, lolcats.py.
"""

from .attention import LigerAttention
from .registry import CORES, build_core

__all__ = ["LigerAttention", "CORES", "build_core"]
