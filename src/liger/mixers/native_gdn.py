"""The `native_gdn` mixer: the gated delta rule exactly as Qwen3.5's linear layers (transformers'
`Qwen3_5GatedDeltaNet`) parameterise it, so that `liger export --to qwen3_5` (liger.export) writes weights that
transformers, llama.cpp and vLLM run with no liger code.

Per layer, from the layer's normed input x [B, T, hidden] (Hq heads of D channels; the host's k and v, of Hk
heads, repeated to Hq as its grouped-query attention reads them)::

    c = silu(conv([q | k | v]))          q, k, v = the host's q_proj(x), k_proj(x), v_proj(x); no q/k norms, no
                                         RoPE; causal depthwise conv over time, CONV_SIZE taps, [3 Hq D] channels
    q' = l2norm(c_q) / sqrt(D),  k' = l2norm(c_k),  v' = c_v
    beta = sigmoid(in_proj_b(x)),  g = -exp(A_log) * softplus(in_proj_a(x) + dt_bias)           [B, T, Hq]
    S_t = exp(g_t) (I - beta_t k'_t^T k'_t) S_{t-1} + beta_t k'_t^T v'_t,   o_t = q'_t S_t
    y = RMSNorm(o) * norm_weight * silu(in_proj_z(x))      per head (eps: the host's rms_norm_eps)

and the host's o_proj (the native out_proj) maps y back. The native in_proj_qkv is [q_proj; k_proj and v_proj
with each key head's rows repeated]: here the host's projections stay (LoRA targets, as for every mixer) and
the export expands them.

Initialisation from the teacher: the convolution passes the current token through at CONV_GAIN (small, so that
silu is near-linear there and the l2norm and RMSNorm, both scale-free, see q, k and v almost unchanged); beta
and the decay are the `gated_deltanet` mixer's, from the mean key m = mean_d k of each key head (in_proj_b's row
= the mean of that head's k_proj rows, in_proj_a = -in_proj_b, dt_bias = 0, A_log = -log(gate_normalizer): so
beta = sigmoid(m), g = logsigmoid(m) / gate_normalizer); norm_weight = 1. in_proj_z starts at 0: the output gate
is closed (the layer outputs 0) until training opens it, which is why this mixer trains with an alignment stage
first (`--recipe staged`, the `liger linearize` default for it).

The state is (S: float32 [B, Hq, D, D], the convolution's last CONV_SIZE - 1 inputs: float32 [B, 3 Hq D,
CONV_SIZE - 1]). Padding (`valid` False) has zero inputs, beta = 0 and g = 0: it leaves the state unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import LigerLayerCache
from ..config import LigerConfig
from ..distributed.context import current
from ..ops import causal_conv1d, l2norm
from .base import MixerCore, State, detach_state
from .delta import DELTA_KERNELS
from .lawcat import CONV_SIZE

Tensor = torch.Tensor

CONV_GAIN = 0.25  # the initial convolution's pass-through tap: silu(0.25 x) ~ x / 8 (1 + x / 8)


class NativeGDNCore(MixerCore):
    """The `native_gdn` mixer (module docstring). Unlike the other cores it reads the layer's input x
    (`uses_hidden`) and the host's projections without its q/k norms; it has no window branch."""

    uses_hidden = True
    uses_mix = False

    def __init__(self, config: LigerConfig, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 hidden_size: int, eps: float) -> None:
        super().__init__(config, num_heads, num_kv_heads, head_dim)
        H, D = num_heads, head_dim
        self.eps = eps
        conv = torch.zeros(3 * H * D, CONV_SIZE)
        conv[:, -1] = CONV_GAIN
        self.conv = nn.Parameter(conv)  # [3 Hq D, CONV_SIZE], the native conv1d.weight[:, 0]
        self.in_proj_z = nn.Linear(hidden_size, H * D, bias=False)
        self.in_proj_b = nn.Linear(hidden_size, H, bias=False)
        self.in_proj_a = nn.Linear(hidden_size, H, bias=False)
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.A_log = nn.Parameter(torch.full((H,), -math.log(config.gate_normalizer)))
        self.norm_weight = nn.Parameter(torch.ones(D))
        nn.init.zeros_(self.in_proj_z.weight)
        nn.init.zeros_(self.in_proj_b.weight)
        nn.init.zeros_(self.in_proj_a.weight)

    @torch.no_grad()
    def init_from_keys(self, k_weight: Tensor) -> None:
        """beta and the decay from the mean key (module docstring); `k_weight` the host's k_proj weight
        [Hk * D, hidden]."""
        G = self.num_heads // self.num_kv_heads
        m = k_weight.float().view(self.num_kv_heads, self.head_dim, -1).mean(1).repeat_interleave(G, 0)  # [Hq, hidden]
        self.in_proj_b.weight.copy_(m)
        self.in_proj_a.weight.copy_(-m)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """All of them (the layer's own projections, convolution, gates and norm) train with the adapters."""
        return list(self.parameters())

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, hidden: Tensor, valid: Tensor | None,
                cache: LigerLayerCache | None, **_) -> Tensor:
        """y [B, T, Hq, D] (x's dtype) from the host's raw q [B, T, Hq, D], k, v [B, T, Hk, D] and the layer's
        input `hidden` [B, T, hidden]; rope, scale and softcap (softmax-only arguments) are ignored."""
        B, T, H, D = q.shape
        G = H // k.shape[2]
        state = cache.state if cache is not None else None
        S, conv_state = (None, None) if state is None else state
        want = cache is not None
        ones = torch.ones(B, T, 1, device=q.device) if valid is None else valid[:, :, None].float()
        k, v = (t.repeat_interleave(G, 2) if G > 1 else t for t in (k, v))
        x = torch.cat([t.float().flatten(2) for t in (q, k, v)], -1) * ones  # [B, T, 3 H D]
        if (sp := current()) is not None:  # the previous ranks' last inputs (no cache here)
            conv_state = sp.preceding(x, CONV_SIZE - 1).transpose(1, 2)
        c, conv_state = causal_conv1d(x, self.conv, activation="silu", initial_state=conv_state,
                                      output_final_state=want)
        cq, ck, cv = c.view(B, T, 3, H, D).unbind(2)
        xf = hidden.float()
        beta = torch.sigmoid(F.linear(xf, self.in_proj_b.weight.float())) * ones
        g = -self.A_log.float().exp() * F.softplus(F.linear(xf, self.in_proj_a.weight.float()) + self.dt_bias.float())
        o, S = DELTA_KERNELS(l2norm(cq) * D**-0.5, l2norm(ck), cv, g * ones, beta, state=S, want_state=want)
        o = o.float()
        y = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm_weight.float()
        y = y * F.silu(F.linear(xf, self.in_proj_z.weight.float()).view(B, T, H, D))
        if cache is not None:
            cache.store(detach_state((S, conv_state)), None, T)
        return y.to(hidden.dtype)

    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """float32 S [Hq, D, D] and the convolution's last CONV_SIZE - 1 inputs [3 Hq D, CONV_SIZE - 1]."""
        H, D = self.num_heads, self.head_dim
        return ((H, D, D), (3 * H * D, CONV_SIZE - 1))
