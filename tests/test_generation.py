"""Prefill + token-by-token decoding with the constant-memory cache equals one full forward pass."""

import pytest
import torch
from conftest import ARCHS, MORE_ARCHS, tiny_model

import liger
from liger.cache import LigerLayerCache, cache_footprint
from liger.cache import CACHE_KWARG, output_cache

ATOL = 1e-4


def incremental_logits(model, ids, mask, prefill):
    """Logits of `ids` computed as one prefill of `prefill` tokens, then one token at a time."""
    out = model(ids[:, :prefill], attention_mask=mask[:, :prefill], use_cache=True)
    cache, logits = output_cache(out), [out.logits]
    for t in range(prefill, ids.shape[1]):
        out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], **{CACHE_KWARG: cache}, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
@pytest.mark.parametrize("softmax_layers", [(), (1,)], ids=["all_linear", "hybrid"])
def test_prefill_then_decode_equals_full_forward(arch, softmax_layers):
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(window=64, softmax_layers=softmax_layers))
    ids = torch.randint(0, 128, (1, 170), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full = model(ids).logits
        inc, cache = incremental_logits(model, ids, mask, prefill=20)
    assert (inc - full).abs().max().item() <= ATOL
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds.count("LigerLayerCache") == 3 - len(softmax_layers)


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_left_padded_batch(arch):
    """A batch of 3 with different left-padding lengths: incremental == full forward on the batch ==
    each sequence alone without padding."""
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(window=16, softmax_layers=(2,)))
    T, pads = 120, [0, 5, 23]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (3, T), generator=gen)
    mask = torch.ones_like(ids)
    for b, p in enumerate(pads):
        ids[b, :p], mask[b, :p] = 0, 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        inc, _ = incremental_logits(model, ids, mask, prefill=30)
        for b, p in enumerate(pads):
            alone = model(ids[b : b + 1, p:]).logits[0]
            assert (full[b, p:] - alone).abs().max().item() <= ATOL
            assert (inc[b, p:] - alone).abs().max().item() <= ATOL
        assert torch.isfinite(full).all() and torch.isfinite(inc).all()


@pytest.mark.parametrize("window", [0, 8])
def test_chunked_prefill_with_state(window):
    """Several multi-token forwards in a row (chunk op with an initial state) also match."""
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(window=window))
    ids = torch.randint(0, 128, (2, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :37], use_cache=True)
        parts = [out.logits]
        for a, b in [(37, 38), (38, 77), (77, 100)]:
            out = model(ids[:, a:b], **{CACHE_KWARG: output_cache(out)}, use_cache=True)
            parts.append(out.logits)
    assert (torch.cat(parts, 1) - full).abs().max().item() <= ATOL


def test_cache_memory_is_constant():
    model = liger.linearize(tiny_model("llama"))
    ids = torch.randint(0, 128, (2, 1000), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        c100 = output_cache(model(ids[:, :100], use_cache=True))
        c1000 = output_cache(model(ids, use_cache=True))
    sizes = lambda c: [(t.shape, t.dtype) for layer in c.layers for t in [layer.state, *layer.window]]  # noqa: E731
    assert all(isinstance(layer, LigerLayerCache) for layer in c1000.layers)
    assert sizes(c100) == sizes(c1000)
    assert liger.cache_nbytes(c100) == liger.cache_nbytes(c1000) == 2 * cache_footprint(model)["fixed"]
    assert c1000.get_seq_length() == 1000


def test_hybrid_cache_grows_only_in_softmax_layers():
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(softmax_layers=(0,)))
    ids = torch.randint(0, 128, (1, 300))
    with torch.no_grad():
        c1 = output_cache(model(ids[:, :100], use_cache=True))
        c2 = output_cache(model(ids, use_cache=True))
    fp = cache_footprint(model)
    assert liger.cache_nbytes(c1) == fp["fixed"] + 100 * fp["per_token"]
    assert liger.cache_nbytes(c2) == fp["fixed"] + 300 * fp["per_token"]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_generate_batched_left_padding_matches_single(arch):
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(window=8, softmax_layers=(1,)))
    prompts = [torch.randint(1, 128, (n,), generator=torch.Generator().manual_seed(n)) for n in (12, 5, 9)]
    T = max(len(p) for p in prompts)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :], mask[b, T - len(p) :] = p, 1
    kw = dict(max_new_tokens=30, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **kw)[:, T:]
        for b, p in enumerate(prompts):
            alone = model.generate(p[None], **kw)[0, len(p) :]
            assert torch.equal(batched[b], alone)


def test_generate_sampling_and_explicit_cache():
    model = liger.linearize(tiny_model("mistral"))
    ids = torch.randint(1, 128, (2, 7))
    kw = dict(max_new_tokens=20, do_sample=True, top_k=0, pad_token_id=0, eos_token_id=None)
    torch.manual_seed(0)
    a = model.generate(ids, **kw)
    torch.manual_seed(0)
    b = model.generate(ids, **{CACHE_KWARG: liger.LigerCache(model)}, **kw)
    assert a.shape == (2, 27) and torch.equal(a, b)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("window", [0, 8])
def test_lolcats_prefill_decode_and_left_padding(arch, window):
    """LoLCATs (trained-looking feature maps and window factors): incremental == full forward == each
    sequence alone. Its feature maps see RoPE'd q/k, so positions follow the mask, as generate() does."""
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(mixer="lolcats", window=window, softmax_layers=(1,)))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for core in (m for m in model.modules() if hasattr(m, "window_factor")):
            core.window_factor.normal_(generator=gen)
            core.feature_map_q.weight.add_(0.3 * torch.randn(core.feature_map_q.weight.shape, generator=gen))
    ids = torch.randint(1, 128, (3, 60), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :5], mask[2, :17] = 0, 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=pos).logits
        out = model(ids[:, :20], attention_mask=mask[:, :20], position_ids=pos[:, :20], use_cache=True)
        cache, parts = output_cache(out), [out.logits]
        for a, b in [(20, 21), (21, 30)] + [(t, t + 1) for t in range(30, 60)]:
            out = model(ids[:, a:b], attention_mask=mask[:, :b], position_ids=pos[:, a:b], **{CACHE_KWARG: cache},
                        use_cache=True)
            parts.append(out.logits)
        inc = torch.cat(parts, 1)
        alone = model(ids[2:3, 17:]).logits[0]
    real = mask.bool()
    assert (inc - full)[real].abs().max().item() <= ATOL
    assert (full[2, 17:] - alone).abs().max().item() <= ATOL


@pytest.mark.parametrize("mixer", ["gla", "hgrn2", "simple_gla", "retention"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("window", [0, 8])
def test_every_gated_mixer_decodes_exactly_with_left_padding(mixer, arch, window):
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(mixer=mixer, window=window, softmax_layers=(1,)))
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 128, (2, 50), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        inc, _ = incremental_logits(model, ids, mask, prefill=12)
        alone = model(ids[1:, 9:]).logits[0]
    assert (inc - full)[mask.bool()].abs().max().item() <= ATOL
    assert (full[1, 9:] - alone).abs().max().item() <= ATOL


def test_learnable_mix_trains_with_lora():
    from liger.train.recipes import add_lora, trainable_parameters

    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(learnable_mix=True, mix=(0.3, 0.7)))
    mix = model.model.layers[0].self_attn.core.mix
    assert mix.shape == (4, 2) and torch.allclose(mix[:, 0], torch.tensor(0.3))
    model = add_lora(model, ["q_proj"])
    names = trainable_parameters(model)
    assert sum(n.endswith("core.mix") for n in names) == 3
