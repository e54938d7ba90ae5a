"""Low-precision weights (liger.quantize): each quantized layer against float32 with its own dequantized
weight, whole models against their float32 selves, prefill + decode against the full forward of the same
quantized model, and the flags of generate / bench."""

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err, tiny_model

import liger
from liger.errors import ConfigError
from liger.quantize import (INT4_GROUP, Int4Linear, Int8Linear, check_format, quantize_weights, weight_format,
                            weight_nbytes)
from test_generation import incremental_logits

# bfloat16 keeps 8 significant bits: the quantized matmuls round their input and output to it
BF16 = 2.0**-8


def _linear(out: int, inp: int, bias: bool = True, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(inp, out, bias=bias)


@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear])
@pytest.mark.parametrize("bias", [False, True])
def test_layer_computes_with_its_dequantized_weight(cls, bias):
    lin = _linear(64, 96, bias)
    q = cls(lin)
    w = q.dequantized()
    # the weight error is at most half a quantization step (plus bfloat16 rounding of the scales and, for
    # int4, of the dequantized weight that `dequantized` reads back from the kernel)
    if cls is Int8Linear:
        step = lin.weight.abs().amax(1, keepdim=True) / 127
    else:
        g = lin.weight.view(64, -1, INT4_GROUP)
        step = ((g.amax(-1) - g.amin(-1)) / 15).repeat_interleave(INT4_GROUP, 1)
    assert ((w - lin.weight).abs() <= step * (0.5 + 4 * BF16) + lin.weight.abs() * BF16).all()
    assert (w - lin.weight).abs().max() > 0  # it is quantized
    if cls is Int8Linear:  # a prefill: the dequantized weight in one float32 matmul, no bfloat16 rounding
        xl = torch.randn(3, 40, 96)
        assert torch.allclose(q(xl), F.linear(xl, w, lin.bias), atol=1e-5)
    x = torch.randn(2, 5, 96)
    y = q(x)
    assert y.shape == (2, 5, 64) and y.dtype == torch.float32
    ref = F.linear(x.bfloat16().float(), w, lin.bias)
    assert rel_err(y, ref) < 2 * BF16
    assert q(x.double()).dtype == torch.float64  # the output keeps the input's dtype


def test_int4_falls_back_to_int8_where_the_kernel_cannot_take_the_shape():
    model = tiny_model("llama", hidden_size=48, intermediate_size=128)  # 48 inputs: not a multiple of 32
    quantize_weights(model, "int4")
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp.down_proj, Int4Linear)  # 128 -> 48: 48 outputs = 3 x 16, 128 inputs = 4 x 32
    assert isinstance(mlp.up_proj, Int8Linear) and isinstance(model.lm_head, Int8Linear)
    assert Int4Linear.supports(torch.nn.Linear(64, 32)) and not Int4Linear.supports(torch.nn.Linear(64, 24))


@pytest.mark.parametrize("fmt,tol", [("bf16", 0.03), ("int8", 0.03), ("int4", 0.25)])
def test_quantized_linearized_model_stays_close_and_its_cache_is_exact(fmt, tol):
    """Logits near the float32 model's; prefill + one token at a time == the full forward of the same
    quantized model (the cache is exact whatever the weights)."""
    model = liger.linearize(tiny_model("llama", hidden_size=64, intermediate_size=128),
                            liger.LigerConfig(window=16, softmax_layers=(1,)))
    ids = torch.randint(0, 128, (2, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        before = weight_nbytes(model)
        q = quantize_weights(model, fmt)
        assert weight_format(q) == fmt
        assert not any(type(m) is torch.nn.Linear for m in q.modules()) or fmt == "bf16"
        if fmt == "int4":
            assert isinstance(q.model.layers[0].mlp.down_proj, Int4Linear)
        full = q(ids).logits
        inc, _ = incremental_logits(q, ids, torch.ones_like(ids), prefill=20)
    assert 0 < rel_err(full, ref) < tol
    assert rel_err(inc.float(), full.float()) < 4 * BF16
    assert weight_nbytes(q) < before


def test_peft_model_is_merged_before_quantizing():
    model = liger.linearize(tiny_model("llama", hidden_size=64, intermediate_size=128), liger.LigerConfig(window=16))
    from liger.train.recipes import add_lora

    peft = add_lora(model, ["q_proj", "v_proj"], r=4)
    with torch.no_grad():  # non-zero adapters, so merging changes the weights
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = peft(ids).logits
        q = quantize_weights(peft, "int8")
        assert not any("lora" in n for n, _ in q.named_modules())
        assert rel_err(q(ids).logits, ref) < 0.03


def test_bad_formats_are_refused():
    with pytest.raises(ConfigError, match="unknown weight format 'int3'"):
        check_format("int3")
    with pytest.raises(ConfigError, match="CPU int4 kernel only"):
        check_format("int4", "cuda")
    model = tiny_model("llama")
    assert quantize_weights(model, "float32") is model and weight_format(model) == "float32"


def test_bench_model_runs_both_models_with_the_weights(tmp_path):
    import json

    from liger.cli import main

    from liger.ops import fused_decode

    out = tmp_path / "model"
    try:
        assert main(["bench", "model", "--out", str(out), "--quick", "--tiny-model", "--contexts", "16",
                     "--batch-sizes", "1", "--decode-tokens", "2", "--weights", "int8", "--fused-decode"]) == 0
        assert fused_decode.is_enabled()
    finally:
        fused_decode.set_enabled(None)
    payload = json.loads((out / "results.json").read_text())
    assert payload["weights"] == "int8" and "weights int8 in both" in payload["models"]
    reason = fused_decode.fused_decode_unavailable()
    assert ("fused decode step: on" in payload["models"]) == (reason is None)
    assert {r["model"] for r in payload["rows"]} == {"original", "linearized"}
