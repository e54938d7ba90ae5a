"""The sparse global cache (LigerConfig.sparse_cache): generation is exact (prefill + token-by-token decode =
one full forward, batched with left padding) for every mixer and architecture, its bytes do not grow with the
context, and with a budget covering every token the window part becomes the host's full softmax attention."""

import copy

import pytest
import torch
from conftest import ARCHS, MORE_ARCHS, tiny_model
from test_generation import ATOL, incremental_logits
from test_mixers import left_padded

import liger
from liger.cache import CACHE_KWARG, cache_footprint, output_cache
from liger.config import MIXERS
from liger.errors import ConfigError


def _padded_batch():
    return left_padded(T=48, pads=(0, 7), seed=5)


def _check_exact(model, prefill=13):
    """Incremental == full forward on a left-padded batch == the padded sequence alone. Positions follow the
    mask, as generate() sets them (lolcats' feature maps see RoPE'd keys, so they depend on absolute positions)."""
    ids, mask = _padded_batch()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=pos).logits
        out = model(ids[:, :prefill], attention_mask=mask[:, :prefill], position_ids=pos[:, :prefill], use_cache=True)
        cache, parts = output_cache(out), [out.logits]
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1],
                        **{CACHE_KWARG: cache}, use_cache=True)
            parts.append(out.logits)
        inc = torch.cat(parts, 1)
        alone = model(ids[1:, 7:]).logits[0]
    real = mask.bool()
    assert torch.isfinite(full).all()
    assert (inc - full)[real].abs().max().item() <= ATOL
    assert (full[1, 7:] - alone).abs().max().item() <= ATOL


@pytest.mark.parametrize("mixer", [m for m in MIXERS if m != "native_gdn"])  # it has no window (next test)
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_every_mixer_decodes_exactly_with_a_sparse_cache(mixer, arch):
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(mixer=mixer, window=4, sparse_cache=3,
                                                                softmax_layers=(1,)))
    _check_exact(model)


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_every_architecture_decodes_exactly_with_a_sparse_cache(arch):
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(window=5, sparse_cache=4))
    _check_exact(model, prefill=20)


def test_sparse_cache_changes_the_output():
    """The option is not a no-op: tokens beyond the window reach the output."""
    base = tiny_model("llama")
    ids, mask = _padded_batch()
    with torch.no_grad():
        a = liger.linearize(copy.deepcopy(base), liger.LigerConfig(window=4))(ids, attention_mask=mask).logits
        b = liger.linearize(copy.deepcopy(base), liger.LigerConfig(window=4, sparse_cache=3))(ids, attention_mask=mask).logits
    assert (a - b)[:, 10:].abs().max().item() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral", "gemma2"])
def test_a_budget_of_every_token_is_softmax_attention(arch):
    """With M >= T every token that left the window is kept: window + sparse set = the whole causal past, so
    with the window part alone (mix 1, 0) the model is the host (gemma2: with its logit soft-capping)."""
    base = tiny_model(arch)
    if getattr(base.config, "sliding_window", None):  # widen the host's own window to cover the whole past
        base.config.sliding_window = 256
        for layer in base.model.layers:
            layer.self_attn.sliding_window = 256
    ids = torch.randint(1, 128, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = base(ids).logits
        model = liger.linearize(copy.deepcopy(base), liger.LigerConfig(window=3, sparse_cache=64, mix=(1.0, 0.0)))
        got = model(ids).logits
        inc, _ = incremental_logits(model, ids, torch.ones_like(ids), prefill=9)
    assert (got - want).abs().max().item() <= ATOL
    assert (inc - want).abs().max().item() <= ATOL


def test_sparse_cache_bytes_are_bounded():
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(window=8, sparse_cache=16))
    ids = torch.randint(0, 128, (2, 600), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        c50 = output_cache(model(ids[:, :50], use_cache=True))
        c600 = output_cache(model(ids, use_cache=True))
    fixed = cache_footprint(model)["fixed"]
    no_sparse = cache_footprint(liger.linearize(tiny_model("llama"), liger.LigerConfig(window=8)))["fixed"]
    assert fixed > no_sparse
    assert liger.cache_nbytes(c50) == liger.cache_nbytes(c600) == 2 * fixed
    shapes = lambda c: [tuple(t.shape) for layer in c.layers for t in layer.sparse]  # noqa: E731
    assert shapes(c50) == shapes(c600)


def test_sparse_cache_config_errors():
    with pytest.raises(ConfigError, match="window"):
        liger.LigerConfig(window=0, sparse_cache=4)
    with pytest.raises(ConfigError, match="sparse_cache"):
        liger.LigerConfig(sparse_cache=-1)


def test_sparse_cache_trains():
    """Gradients reach the projections through the kept tokens (the choice itself carries none)."""
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(window=4, sparse_cache=3))
    ids = torch.randint(1, 128, (2, 40), generator=torch.Generator().manual_seed(4))
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "k_proj" in n]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_reconfigure_restores_softmax_layers_and_sets_the_budget(arch):
    """liger.surgery.reconfigure: restoring every layer gives back the host's logits; restoring one and setting
    M equals linearizing with that config from the start; the cache then grows in the restored layer only."""
    from liger.surgery import reconfigure

    base = tiny_model(arch)
    ids = torch.randint(1, 128, (1, 30), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = base(ids).logits
        all_back = reconfigure(liger.linearize(copy.deepcopy(base)), softmax_layers=(0, 1, 2))
        assert not any(p.is_meta for p in all_back.parameters())
        assert (all_back(ids).logits - want).abs().max().item() <= ATOL
        one = reconfigure(liger.linearize(copy.deepcopy(base), liger.LigerConfig(window=4)), softmax_layers=(1,),
                          sparse_cache=3)
        ref = liger.linearize(copy.deepcopy(base), liger.LigerConfig(window=4, softmax_layers=(1,), sparse_cache=3))
        assert (one(ids).logits - ref(ids).logits).abs().max().item() <= ATOL
    assert one.config.liger["softmax_layers"] == [1] and one.config.liger["sparse_cache"] == 3
    with pytest.raises(ConfigError, match="out of range"):
        reconfigure(one, softmax_layers=(7,))
