"""The CUDA path (flash-linear-attention's Triton kernels, and the torch ops on GPU) against the same
float64 references as the CPU path. Runs only where CUDA exists."""

import pytest
import torch
from conftest import rel_err, tiny_model
from test_ops_gla import make_inputs

import liger
from liger.ops import chunk_gla, fused_recurrent_gla, window_attention
from liger.ops.gla_naive import naive_recurrent_gla
from liger.ops.window_naive import naive_window_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("op", [chunk_gla, fused_recurrent_gla], ids=["chunk", "fused_recurrent"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 1000])
def test_gla_on_cuda_matches_reference(op, T):
    inputs = make_inputs(2, T, 4, 2, 32, 48, seed=T)
    q, k, v, g = (x.cuda().requires_grad_() for x in inputs[:4])
    h0 = inputs[4]
    o, s = op(q, k, v, g, initial_state=h0.cuda(), output_final_state=True)
    leaves = [x.clone().requires_grad_() for x in inputs[:4]]
    ro, rs = naive_recurrent_gla(*leaves, initial_state=h0, output_final_state=True)
    assert rel_err(o.cpu(), ro) < 5e-3 and rel_err(s.cpu(), rs) < 5e-3
    do = torch.randn_like(o)
    grads = torch.autograd.grad((o * do).sum(), [q, k, v, g])
    rgrads = torch.autograd.grad((ro * do.cpu().double()).sum(), leaves)
    for a, b in zip(grads, rgrads):
        assert rel_err(a.cpu(), b) < 5e-3


def test_window_on_cuda_matches_reference():
    q, k, v = torch.randn(2, 200, 4, 32), torch.randn(2, 200, 2, 32), torch.randn(2, 200, 2, 32)
    o = window_attention(q.cuda(), k.cuda(), v.cuda(), 64)
    assert rel_err(o.cpu(), naive_window_attention(q, k, v, 64)) < 1e-4


def test_linearized_model_on_cuda_matches_cpu():
    model = liger.linearize(tiny_model("llama"))
    ids = torch.randint(0, 128, (2, 150))
    with torch.no_grad():
        cpu = model(ids).logits
        gpu = model.cuda()(ids.cuda()).logits.cpu()
    assert (gpu - cpu).abs().max() < 1e-3
