"""Pure tensor functions (no nn.Module): the recurrences and the sliding-window attention.

Each recurrence has a chunkwise-parallel op (training, prefill) and a token-by-token op (decode) with the
same signature and result, time-first layout as in flash-linear-attention; the float64 references the tests
compare them with live in `reference` and `reference_more`.
"""

from .conv import causal_conv1d
from .delta import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, l2norm
from .gla import chunk_gla, fused_recurrent_gla
from .gsa import chunk_gsa, chunk_value_gated_gla, fused_recurrent_gsa, fused_recurrent_value_gated_gla
from .simple_gla import chunk_simple_gla, fused_recurrent_simple_gla, retention_decays
from .window import roll_window, window_attention, window_attention_parts

__all__ = [
    "chunk_gla", "fused_recurrent_gla",
    "chunk_simple_gla", "fused_recurrent_simple_gla", "retention_decays",
    "chunk_gsa", "fused_recurrent_gsa", "chunk_value_gated_gla", "fused_recurrent_value_gated_gla",
    "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule", "l2norm",
    "causal_conv1d",
    "window_attention", "roll_window", "window_attention_parts",
]
