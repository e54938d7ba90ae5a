"""Pure tensor functions (no nn.Module): the recurrences and the sliding-window attention."""

from .gla import chunk_gla, fused_recurrent_gla
from .window import roll_window, window_attention, window_attention_parts

__all__ = ["chunk_gla", "fused_recurrent_gla", "window_attention", "roll_window", "window_attention_parts"]
