"""Sliding-window attention: blocked prefill and rolling-cache decode against the float64 reference."""

import pytest
import torch
from conftest import rel_err

from liger.ops import roll_window, window_attention
from liger.ops.window_naive import naive_window_attention


def make(B, T, Hq, Hk, D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, Hq, D, generator=gen), torch.randn(B, T, Hk, D, generator=gen),
            torch.randn(B, T, Hk, D, generator=gen))


@pytest.mark.parametrize("use_sdpa", [False, True], ids=["explicit", "sdpa"])
@pytest.mark.parametrize("T,W", [(1, 64), (5, 1), (63, 64), (64, 64), (65, 64), (300, 64), (100, 7)])
def test_prefill_matches_reference_with_padding_and_grads(T, W, use_sdpa):
    q, k, v = (x.requires_grad_() for x in make(3, T, 4, 2, 8, seed=T))
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[1, : T // 3] = False  # left padding
    valid[2, T // 2 :] = False  # right padding
    o = window_attention(q, k, v, W, key_valid=valid, use_sdpa=use_sdpa)
    r = naive_window_attention(q, k, v, W, key_valid=valid)
    assert torch.isfinite(o).all()
    assert rel_err(o, r) < 1e-5
    do = torch.randn_like(o)
    ga = torch.autograd.grad((o * do).sum(), [q, k, v])
    gb = torch.autograd.grad((r * do.double()).sum(), [q, k, v])
    floor = 1e-5 * do.double().norm()  # T=1: the exact q/k gradients are 0; float32 leaves ~1e-7 per element
    for a, b in zip(ga, gb):
        assert torch.isfinite(a).all() and (a.double() - b).norm() <= 1e-5 * b.norm() + floor


@pytest.mark.parametrize("use_sdpa", [False, True], ids=["explicit", "sdpa"])
@pytest.mark.parametrize("chunks", [[1] * 90, [20] + [1] * 70, [7, 50, 1, 1, 31]])
def test_rolling_cache_equals_full_prefill(chunks, use_sdpa):
    W, T = 16, sum(chunks)
    q, k, v = make(2, T, 4, 2, 8, seed=len(chunks))
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, :9] = False
    full = naive_window_attention(q, k, v, W, key_valid=valid)
    past, outs, t = None, [], 0
    for n in chunks:
        sl = slice(t, t + n)
        outs.append(window_attention(q[:, sl], k[:, sl], v[:, sl], W, key_valid=valid[:, sl], past=past,
                                     use_sdpa=use_sdpa))
        past = roll_window(past, k[:, sl], v[:, sl], valid[:, sl], W)
        assert past[0].shape == (2, W - 1, 2, 8)  # constant size
        t += n
    assert rel_err(torch.cat(outs, 1), full) < 1e-5


@pytest.mark.parametrize("use_sdpa", [False, True], ids=["explicit", "sdpa"])
def test_never_materialises_t_by_t(monkeypatch, use_sdpa):
    import torch.nn.functional as F

    seen = []
    real_einsum, real_sdpa = torch.einsum, F.scaled_dot_product_attention

    def spy_einsum(eq, *ops):
        out = real_einsum(eq, *ops)
        seen.append(out.shape)
        return out

    def spy_sdpa(q, k, v, attn_mask=None, **kw):
        seen.extend([attn_mask.shape, k.shape[:-1] + (q.shape[-2],)])  # the mask and the implied scores
        return real_sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch, "einsum", spy_einsum)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_sdpa)
    q, k, v = make(1, 1024, 2, 2, 8)
    window_attention(q, k, v, 32, use_sdpa=use_sdpa)
    assert seen and max(s.numel() for s in seen) <= 1024 * 2 * (32 + 31) * 8  # O(T * window)
