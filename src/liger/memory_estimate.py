"""Will a run fit in memory? Its peak memory estimated from the model's config alone (no weights read) and
compared with the memory available, before anything loads: `liger linearize`, `eval` and `generate` refuse a
run that cannot fit, naming the estimate, the available figure and the fix, instead of being killed by the
kernel minutes later. (Measured memory: liger.evaluate.memory.)

For a model of P parameters, L layers, hidden size H, vocabulary V and C bytes of keys and values per token
and softmax layer (2 x kv_heads x head_dim x 4), with N tokens in one forward pass (batch x length):

- training (float32 weights, LoRA or attention transfer; bf16 autocast measured the same or less):
    weights      P x 4 x 2: the weights, and as much again of workspace (the extra peak of a step has a part
                 of about P x 4 that does not grow with N); the teacher of the KL terms (--distill kl, the
                 distill and staged recipes) is the student itself in teacher mode: no second copy
    activations  L x N x H x 4 x ACT (kept for the backward); with gradient checkpointing
                 L x N x H x 4 x CKPT + N x H x 4 x ACT (one layer recomputed)
    logits       N x V x 4 x LOGITS (logits, log-softmax, gradient); DISTILL_LOGITS with a teacher
- inference (no gradients: eval, generate):
    weights      P x bytes per parameter x 2 (weights and workspace, per model; float32 for eval)
    activations  N x H x 4 x FWD (one layer at a time)
    logits       N x V x 4 x EVAL_LOGITS where every position's log-probabilities of both models are kept
                 (eval's lm section); elsewhere only a few positions' logits are computed
    cache        N x C x (softmax layers): their keys and values (a linearized layer's state and window are
                 fixed per sequence: left out)

Calibration: the peak RSS above the start (`liger.evaluate.memory.PeakRSS`, VmHWM) of one LoRA step (q/k/v,
AdamW, the linearized model: gla, window 64) or one no-grad forward pass, CPU, a fresh process each; compared
with the estimate less the weights loaded before the measurement:

    model                                 batch x len   mode                     measured  estimate
    tiny Llama (P 4.8M, L 3, H 48,        1 x 512       train fp32                317 MB    344 MB
      V 49152)                            4 x 512       train fp32 / bf16    1210/1222 MB   1320 MB
                                          2 x 1024      train --distill kl *     3141 MB   3335 MB
    bundled SmolLM2-135M (P 134.5M,       1 x 256       train fp32               1216 MB   1195 MB
      L 30, H 576, V 49152)               2 x 512       train fp32 / bf16    3328/2963 MB   3239 MB
                                          1 x 1024      train fp32               3287 MB   3239 MB
                                          2 x 512       train checkpointing      2134 MB   2094 MB
                                          2 x 512       ... with bf16            1610 MB   2094 MB
                                          1 x 512       train --distill kl *     2882 MB   2889 MB
                                          4 x 1024      forward, all logits      1356 MB   1497 MB
                                          2 x 4096      forward, KV cache        1189 MB   1305 MB
                                          2 x 4096      linearized forward        972 MB    945 MB

    * measured when the teacher was a second copy of the model loaded beforehand (so not in the figure), with
      an estimate that counted its weights (P x 4 x 2 more); the shared teacher no longer loads that copy.

The estimate is a first-order figure (within about 10% of these, 30% over with checkpointing and bf16), and a
run is refused only when it exceeds what is available: it stops runs that cannot fit by far (--batch-size
1000000 at 512 tokens: about 1.4 PB), never the README's defaults (bundled teacher: linearize about 2.5 GB, eval
about 9 GB, the batch-8 prefill at 8,192 tokens) on a 24 GB machine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

ACT = 31.0  # float32 values kept per token, layer and hidden unit for the backward
CKPT = 13.0  # ... with gradient checkpointing (each layer's input and what the recomputation keeps)
LOGITS = 3.3  # copies of the [N, V] float32 logits in a cross-entropy step
DISTILL_LOGITS = 8.5  # ... with --distill kl (the teacher's logits, both log-softmaxes, the KL terms)
FWD = 24.0  # float32 values per token and hidden unit live in one layer of a no-grad forward (measured 14-23)
EVAL_LOGITS = 6.0  # [N, V] float32 copies in eval's lm section (both models' log-probabilities and the KL)

MEMINFO = Path("/proc/meminfo")
GB = 1e9


class ModelShape:
    """The sizes of a model that the estimates need, from its transformers config (no weights)."""

    def __init__(self, config) -> None:
        c = config.get_text_config()
        self.layers = int(c.num_hidden_layers)
        self.hidden = int(c.hidden_size)
        self.vocab = int(c.vocab_size)
        heads = int(c.num_attention_heads)
        kv_heads = int(getattr(c, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(c, "head_dim", None) or self.hidden // heads)
        self.kv_bytes_per_token = 2 * kv_heads * head_dim * 4  # one softmax layer, float32
        experts = int(getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) or 1)
        inner = int((getattr(c, "moe_intermediate_size", None) if experts > 1 else None) or c.intermediate_size)
        attention = 2 * self.hidden * heads * head_dim + 2 * self.hidden * kv_heads * head_dim
        per_layer = attention + experts * 3 * self.hidden * inner + 2 * self.hidden
        tied = bool(getattr(config, "tie_word_embeddings", False))
        self.params = self.layers * per_layer + self.hidden + self.vocab * self.hidden * (1 if tied else 2)
        dtype = str(getattr(config, "dtype", None) or "float32")
        self.param_bytes = 2 if ("16" in dtype) else 4  # as stored (generate loads it so)
        self.softmax_layers = _softmax_layers(getattr(config, "liger", None), self.layers)


def _softmax_layers(liger: dict | None, layers: int) -> int:
    """Layers kept as softmax attention by a checkpoint's "liger" entry (all of them without one)."""
    if not isinstance(liger, dict):
        return layers
    every = liger.get("softmax_every") or 0
    listed = set(liger.get("softmax_layers") or ())
    return len(listed | (set(range(every - 1, layers, every)) if every else set()))


def training_bytes(shape: ModelShape, tokens: int, distill: bool = False, checkpointing: bool = False
                   ) -> dict[str, float]:
    """The parts of the estimated peak memory of training on micro-batches of `tokens` tokens (batch x
    seq-len, per process)."""
    layer = tokens * shape.hidden * 4
    acts = shape.layers * layer * CKPT + layer * ACT if checkpointing else shape.layers * layer * ACT
    return {"weights": shape.params * 4 * 2, "activations": acts,
            "logits": tokens * shape.vocab * 4 * (DISTILL_LOGITS if distill else LOGITS)}


def inference_weights(shape: ModelShape, param_bytes: int) -> float:
    """A loaded model without gradients: its weights and as much again of workspace (measured: the first
    forward pass of the bundled teacher adds about P x 4 whatever the length)."""
    return 2 * shape.params * param_bytes


def forward_bytes(shape: ModelShape, tokens: int, full_logits: bool = False, cached_layers: int = 0
                  ) -> dict[str, float]:
    """The transient parts of a no-grad forward pass over `tokens` tokens: one layer's activations, the logits
    (`full_logits`: every position's, as eval's lm section keeps them) and the keys and values that
    `cached_layers` softmax layers keep."""
    return {"activations": tokens * shape.hidden * 4 * FWD,
            "logits": tokens * shape.vocab * 4 * EVAL_LOGITS if full_logits else 0.0,
            "cache": tokens * shape.kv_bytes_per_token * cached_layers}


def available_bytes(device: str = "cpu") -> tuple[float | None, str]:
    """(bytes available, where the figure comes from): MemAvailable of /proc/meminfo on a CPU, the free
    memory of the GPU on CUDA; (None, "") where it cannot be read (no check is made then)."""
    if device.startswith("cuda"):
        import torch

        try:
            free, _ = torch.cuda.mem_get_info(torch.device(device))
        except (RuntimeError, AssertionError, ValueError):  # no CUDA, or no such GPU: init_distributed says so
            return None, ""
        return float(free), f"free on {device}"
    try:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", MEMINFO.read_text(), re.M)
    except OSError:
        return None, ""
    if not m:
        return None, ""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))  # torchrun: processes on this machine
    share = f", shared by {local} processes" if local > 1 else ""
    return int(m.group(1)) * 1024 / local, f"MemAvailable{share}"


def _gb(n: float) -> str:
    """1.5e9 -> "1.5 GB"; 2e6 -> "2 MB"; 3e15 -> "3,000.0 TB"."""
    if n >= 1e12:
        return f"{n / 1e12:,.1f} TB"
    return f"{n / GB:,.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:,.0f} MB"


def check_fits(parts: dict[str, float], what: str, fix: str, device: str = "cpu") -> float:
    """Raise ConfigError if the estimate (the sum of `parts`) exceeds the memory available on `device`:
    "`what` needs about X (estimate: weights a + ...), more than the Y available (MemAvailable); `fix`".
    Returns the estimate."""
    total = sum(parts.values())
    available, source = available_bytes(device)
    if available is not None and total > available:
        detail = " + ".join(f"{k} {_gb(v)}" for k, v in parts.items() if v)
        raise ConfigError(f"{what} needs about {_gb(total)} of memory (estimate: {detail}), more than the "
                          f"{_gb(available)} available ({source}); {fix}")
    return total


def job_device() -> str:
    """Where `liger linearize` will train: cuda:LOCAL_RANK under torchrun with CUDA (unless
    LIGER_DIST_BACKEND=gloo), else the CPU -- as liger.distributed.runtime.init_distributed decides."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("LIGER_DIST_BACKEND", "") != "gloo":
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
    return "cpu"
