"""Low-precision weights for generation, evaluation and benchmarks: `quantize_weights(model, fmt)` replaces
the model's linear layers (attention projections, MLPs, the output layer, a mixer's own projections) in place.

Formats (`WEIGHT_FORMATS`):
- "float32": unchanged.
- "bf16": the whole model in bfloat16 (`model.to`); the linear mixers still keep their states in float32.
- "int8": weight-only int8, one symmetric scale per output channel (w = q * scale, q in [-127, 127]),
  through PyTorch's own `aten._weight_int8pack_mm`.
- "int4": weight-only 4-bit in groups of `INT4_GROUP` input channels with a scale and an offset each (as
  llama.cpp's Q4_1: w = (q - 8) * scale + zero, q in [0, 15]), through PyTorch's `aten._weight_int4pack_mm_for_cpu`
  (CPU only); a layer whose shape that op does not take (out_features not a multiple of 16, in_features not a
  multiple of the group) gets int8 instead.

The quantized layers take bfloat16 activations at the matmul (inputs are cast, outputs cast back to the
input's dtype), so the rest of the model (norms, mixers, caches) keeps its dtype. An int8 layer given more
than `PACKED_MAX_ROWS` tokens at once (a prefill) multiplies in the input's dtype with its dequantized weight
instead: the same weight, a kernel made for many rows. Decoding at batch 1 reads
every weight once per token, so its time falls with the bytes per weight.

Why hand-written wrappers around PyTorch's ops rather than torchao's configs: on the CPUs we measured, torchao
0.18's `Int8WeightOnlyConfig` ran 4-10x slower than float32 at batch 1 (it does not reach the packed int8
kernel with float32 models) and it no longer has a CPU int4 layout; the aten ops the wrappers call are the
kernels torchao used for those layouts. The numbers are in docs/PERFORMANCE.md.

For inference only (no gradients through the quantized weights, nothing saved): quantize after loading.
A PEFT model is merged first.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError

Tensor = torch.Tensor

WEIGHT_FORMATS = ("float32", "bf16", "int8", "int4")
INT4_GROUP = 32  # input channels per scale/offset pair (llama.cpp's Q4_0/Q4_1 blocks are 32 too)
# Rows (tokens) above which an int8 layer dequantizes its weight and runs one float matmul: PyTorch's packed
# int8 kernel is made for decoding (a few rows) and ran ~2x slower than float32 on 512-token prefills.
PACKED_MAX_ROWS = 32


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1]).to(torch.bfloat16)


class _PackedLinear(nn.Module):
    """What the quantized layers share: the shape, the bias (frozen), and y [..., out] in x's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def _output(self, y: Tensor, x: Tensor) -> Tensor:
        """The kernel's output [rows, out] as x's dtype and leading shape, plus the bias."""
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def _format(self) -> str:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._format()}"


class Int8Linear(_PackedLinear):
    """A linear layer with int8 weights [out, in] and bfloat16 per-channel scales [out]; y = x W^T + b.
    x [..., in] of any float dtype -> y [..., out] of x's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        w = linear.weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp_min(1e-12).bfloat16()  # rounded first: q is nearest for it
        self.register_buffer("qweight", (w / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)

    def dequantized(self) -> Tensor:
        """The weight the layer computes with, float32 [out, in] (tests)."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() // self.in_features > PACKED_MAX_ROWS:  # prefill: dequantize once, one float matmul
            return torch.nn.functional.linear(x, self.dequantized().to(x.dtype),
                                              None if self.bias is None else self.bias.to(x.dtype))
        return self._output(torch.ops.aten._weight_int8pack_mm(_flat(x), self.qweight, self.scale), x)

    def _format(self) -> str:
        return "int8"


class Int4Linear(_PackedLinear):
    """A linear layer with 4-bit weights in groups of `INT4_GROUP` input channels, packed for PyTorch's CPU
    kernel, with bfloat16 (scale, zero) pairs [in / group, out, 2]; y = x W^T + b, x's dtype."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP) -> None:
        super().__init__(linear)
        w = linear.weight.detach().float()
        out, inp = w.shape
        wg = w.view(out, inp // group, group)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / 15).clamp_min(1e-12)
        zero = lo + 8 * scale  # the kernel computes (q - 8) * scale + zero
        # quantize against the bfloat16-rounded (scale, zero) the kernel will use, so rounding is to nearest
        scale_b, zero_b = scale.bfloat16().float(), zero.bfloat16().float()
        q = ((wg - zero_b[..., None]) / scale_b[..., None] + 8).round().clamp(0, 15).to(torch.int32)
        self.group = group
        self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.view(out, inp), 1))
        self.register_buffer("scale_zero", torch.stack([scale, zero], -1).transpose(0, 1).contiguous().bfloat16())

    @staticmethod
    def supports(linear: nn.Linear, group: int = INT4_GROUP) -> bool:
        """Whether PyTorch's CPU int4 kernel takes this layer's shape."""
        return linear.out_features % 16 == 0 and linear.in_features % group == 0

    def dequantized(self) -> Tensor:
        """The weight the layer computes with, float32 [out, in] (tests): the product with the identity."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.qweight, self.group, self.scale_zero).float().T

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(_flat(x), self.qweight, self.group, self.scale_zero)
        return self._output(y, x)

    def _format(self) -> str:
        return f"int4, group={self.group}"


def check_format(fmt: str, device: torch.device | str = "cpu") -> None:
    """Raise ConfigError for an unknown format, or one this device cannot run."""
    if fmt not in WEIGHT_FORMATS:
        raise ConfigError(f"unknown weight format {fmt!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    if fmt == "int4" and torch.device(device).type != "cpu":
        raise ConfigError("--weights int4 runs PyTorch's CPU int4 kernel only; use --weights int8 or bf16 on "
                          f"{torch.device(device).type}")


def quantize_weights(model: nn.Module, fmt: str) -> nn.Module:
    """`model` with its weights in `fmt` (module docstring): the linear layers replaced in place (int8/int4),
    or the model cast (bf16). Returns the model to use (a PEFT model comes back merged)."""
    device = next(model.parameters()).device
    check_format(fmt, device)
    if fmt == "float32":
        return model
    if hasattr(model, "merge_and_unload"):  # a PeftModel: fold the adapters into the weights first
        model = model.merge_and_unload()
    if fmt == "bf16":
        return model.to(torch.bfloat16)
    swaps = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, linear in swaps:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = Int4Linear(linear) if fmt == "int4" and Int4Linear.supports(linear) else Int8Linear(linear)
        setattr(parent, attr, new.to(device))
    # the output layer no longer shares the embedding's weight: keep transformers from re-tying it
    model.config.get_text_config().tie_word_embeddings = False
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    model.config.liger_weights = fmt
    return model


def weight_format(model: nn.Module) -> str:
    """The format `quantize_weights` gave `model` ("float32" if none; "bf16" for a bfloat16 model)."""
    fmt = getattr(model.config, "liger_weights", None)
    if fmt:
        return fmt
    return "bf16" if next(model.parameters()).dtype == torch.bfloat16 else "float32"


def weight_nbytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (quantized weights count at their packed size)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
