"""nn.Modules built on liger.ops that replace a host model's softmax attention, reusing its projections."""

from .liger_attention import LigerAttention

__all__ = ["LigerAttention"]
