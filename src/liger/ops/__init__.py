"""Pure tensor functions (no nn.Module): the recurrences and the sliding-window attention.

One module per op family, its float64 reference beside it (the tests compare the two):

    gla.py         chunk_gla, fused_recurrent_gla, gla_step          gla_naive.py
    simple_gla.py  chunk_simple_gla, fused_recurrent_simple_gla      simple_gla_naive.py
    gsa.py         chunk_gsa, fused_recurrent_gsa, value-gated GLA   gsa_naive.py
    delta.py       chunk_gated_delta_rule, fused_recurrent_...       delta_naive.py
    window.py      window_attention, window_step, roll_window        window_naive.py
    conv.py        causal_conv1d                                     conv_naive.py
    common.py      float32_op, shape and value checks (the input contract), chunking, the chunk scan and
                   token loop the ops share
    backend.py     CUDA dispatch of the GLA ops to flash-linear-attention

Each recurrence has a chunkwise-parallel op (training, prefill) and a token-by-token op (decode) with the
same signature and result, time-first layout as in flash-linear-attention.

Input contract (each op's docstring): gates g <= 0 and beta in [0, 2], else ValueError; NaN/inf inputs reach no
earlier output (causal, as the token-by-token recurrence); T = 0 gives an empty output and the initial state.
`check_inputs=False` skips the value check.
"""

from .common import float32_op
from .conv import causal_conv1d
from .delta import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, l2norm
from .gla import GATE_FLOOR, chunk_gla, fused_recurrent_gla, gla_step
from .gsa import (GSAState, chunk_gsa, chunk_value_gated_gla, fused_recurrent_gsa, fused_recurrent_value_gated_gla,
                  gsa_passes)
from .simple_gla import chunk_simple_gla, fused_recurrent_simple_gla, retention_decays
from .window import roll_window, window_attention, window_attention_parts, window_step

__all__ = [
    "chunk_gla", "fused_recurrent_gla", "gla_step", "GATE_FLOOR", "float32_op",
    "chunk_simple_gla", "fused_recurrent_simple_gla", "retention_decays",
    "chunk_gsa", "fused_recurrent_gsa", "chunk_value_gated_gla", "fused_recurrent_value_gated_gla",
    "gsa_passes", "GSAState",
    "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule", "l2norm",
    "causal_conv1d",
    "window_attention", "roll_window", "window_attention_parts", "window_step",
]
