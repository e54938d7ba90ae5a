"""The gsa, gated_deltanet, lawcat and native_gdn mixers: prefill + decode == full forward, left padding,
save/load, their constructions and parameters; the cache of every mixer against its footprint."""

import pytest
import torch
from conftest import tiny_model

import liger
from liger.cache import CACHE_KWARG, LigerLayerCache, cache_footprint, output_cache
from liger.errors import ConfigError
from liger.mixers.delta import delta_construct
from liger.mixers.gsa import gsa_construct

ATOL = 1e-4
NEW_MIXERS = ["gsa", "gated_deltanet", "lawcat", "native_gdn"]
# (mixer, window) pairs: native_gdn has no window branch
NATIVE_PARAMETERS = tuple(f"core.{n}" for n in ("conv", "in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight",
                                                 "dt_bias", "A_log", "norm_weight"))
MIXER_WINDOWS = [(m, w) for m in NEW_MIXERS for w in (0, 64) if not (m == "native_gdn" and w)]


def convert(arch, mixer, window, softmax_layers=(1,), seed=0, **kw):
    """A tiny model linearized with `mixer` (native_gdn: no window, whatever `window` says); lawcat's
    convolutions are moved off the identity, so that the convolution state matters when decoding, and every
    native_gdn parameter is perturbed (its output gate starts closed)."""
    window = 0 if mixer == "native_gdn" else window
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(mixer=mixer, window=window,
                                                                softmax_layers=softmax_layers, **kw))
    perturb(model, seed)
    return model


def perturb(model, seed=0, scale=0.3):
    """Move lawcat's convolutions and every native_gdn parameter off their initial values (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("core.conv_q", "core.conv_k", *NATIVE_PARAMETERS)):
                p.add_(scale * torch.randn(p.shape, generator=gen))


def left_padded(T=90, pads=(0, 7, 23), seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 128, (len(pads), T), generator=gen)
    mask = torch.ones_like(ids)
    for b, p in enumerate(pads):
        ids[b, :p], mask[b, :p] = 0, 0
    return ids, mask


def incremental(model, ids, mask, segments):
    """Logits from a forward per segment [(a, b), ...] with the cache carried along."""
    cache, parts = None, []
    for a, b in segments:
        out = model(ids[:, a:b], attention_mask=mask[:, :b], **{CACHE_KWARG: cache}, use_cache=True)
        cache = output_cache(out)
        parts.append(out.logits)
    return torch.cat(parts, 1), cache


@pytest.mark.parametrize("mixer,window", MIXER_WINDOWS)
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_prefill_then_decode_equals_full_forward_with_left_padding(mixer, arch, window):
    model = convert(arch, mixer, window)
    ids, mask = left_padded()
    T = ids.shape[1]
    segments = [(0, 20), (20, 21), (21, 37)] + [(t, t + 1) for t in range(37, T)]  # prefill, decode, chunk, decode
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        inc, cache = incremental(model, ids, mask, segments)
        alone = model(ids[2:, 23:]).logits[0]
    real = mask.bool()
    assert torch.isfinite(full).all() and torch.isfinite(inc).all()
    assert (inc - full)[real].abs().max().item() <= ATOL
    assert (full[2, 23:] - alone).abs().max().item() <= ATOL
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds == ["LigerLayerCache", "DynamicLayer", "LigerLayerCache"]


@pytest.mark.parametrize("mixer", NEW_MIXERS + ["gla", "hgrn2", "simple_gla", "retention", "lolcats"])
def test_cache_is_constant_and_matches_the_footprint(mixer):
    model = convert("llama", mixer, 8, softmax_layers=())
    ids = torch.randint(0, 128, (2, 300), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        c50 = output_cache(model(ids[:, :50], use_cache=True))
        c300 = output_cache(model(ids, use_cache=True))
    assert all(isinstance(layer, LigerLayerCache) for layer in c300.layers)
    assert liger.cache_nbytes(c50) == liger.cache_nbytes(c300) == 2 * cache_footprint(model)["fixed"]
    c300.batch_repeat_interleave(2)  # tuple states follow batch operations (beam search)
    assert liger.cache_nbytes(c300) == 4 * cache_footprint(model)["fixed"]


@pytest.mark.parametrize("mixer", NEW_MIXERS)
def test_save_and_load_roundtrip(mixer, tmp_path):
    model = convert("qwen3", mixer, 16, softmax_layers=(0,), num_slots=8 if mixer == "gsa" else 64)
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(6))
    model.save_pretrained(tmp_path / "m")
    loaded = liger.from_pretrained(tmp_path / "m")
    assert loaded.liger_config == model.liger_config
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_parameters_added():
    n0 = sum(p.numel() for p in tiny_model("llama").parameters())
    for mixer in ("gsa", "gated_deltanet"):  # Liger-style: no new parameters
        model = liger.linearize(tiny_model("llama"), liger.LigerConfig(mixer=mixer))
        assert sum(p.numel() for p in model.parameters()) == n0
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(mixer="lawcat"))
    core = model.model.layers[0].self_attn.core
    assert core.conv_q.shape == (4 * 16, 4) and core.conv_k.shape == (2 * 16, 4)
    assert torch.equal(core.conv_k[:, -1], torch.ones(32)) and not core.conv_k[:, :-1].any()  # identity
    assert sum(p.numel() for p in model.parameters()) == n0 + 3 * (4 + 2) * 16 * 4
    assert len(model.model.layers[0].self_attn.own_parameters()) == 2


def test_lawcat_at_init_is_normalised_liger_gla():
    """Identity convolutions: the linear branch is Liger-GLA divided by its normaliser q' z."""
    from liger.mixers.gla import gla_construct
    from liger.ops.gla_naive import naive_recurrent_gla

    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(mixer="lawcat", window=0))
    core = model.model.layers[0].self_attn.core
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 13, h, 16, generator=gen) for h in (4, 2, 2))
    o, _ = core.linear(q, k, v, None, None, False)
    qf, kf, g = gla_construct(q, k, 16.0)
    num, _ = naive_recurrent_gla(qf, kf, v, g, scale=1.0)
    den, _ = naive_recurrent_gla(qf, kf, torch.ones(2, 13, 2, 1), g, scale=1.0)
    assert (o - num / den).abs().max().item() < 1e-4


def test_lawcat_convolutions_train_with_lora():
    from liger.train.recipes import add_lora, trainable_parameters

    model = add_lora(liger.linearize(tiny_model("llama"), liger.LigerConfig(mixer="lawcat")), ["q_proj"])
    names = trainable_parameters(model)
    assert sum(n.endswith(("core.conv_q", "core.conv_k")) for n in names) == 6


def test_gsa_slots_and_construction():
    model = convert("llama", "gsa", 0, softmax_layers=())
    assert model.model.layers[0].self_attn.core.slots == 16  # head_dim 16 < 64: one slot per key channel
    model = convert("llama", "gsa", 0, softmax_layers=(), num_slots=4)
    with torch.no_grad():
        cache = output_cache(model(torch.randint(0, 128, (1, 10)), use_cache=True))
    hk, hv = cache.layers[0].state
    assert hk.shape == (1, 2, 16, 4) and hv.shape == (1, 2, 4, 16) and hk.dtype == torch.float32
    k = torch.randn(2, 5, 2, 16)
    _, _, s, g = gsa_construct(torch.randn(2, 5, 4, 16), k, 4, 16.0)
    assert s.shape == g.shape == (2, 5, 2, 4)
    assert (g <= 0).all() and torch.allclose(s, 1 - g.exp())
    assert torch.allclose(g[..., 0], torch.nn.functional.logsigmoid(k[..., :4].mean(-1)) / 16)


def test_gated_deltanet_negative_eigenvalues():
    k = 6 * torch.randn(2, 50, 2, 16, generator=torch.Generator().manual_seed(8)) + 3
    q = torch.randn(2, 50, 4, 16)
    qf, kf, g, beta = delta_construct(q, k, 16.0)
    assert beta.min() >= 0 and beta.max() <= 1 and (g <= 0).all()
    assert torch.allclose(kf.norm(dim=-1), torch.ones(2, 50, 2), atol=1e-5)
    _, _, g2, beta2 = delta_construct(q, k, 16.0, negative_eigen=True)
    assert beta2.max() > 1 and beta2.max() <= 2 and torch.allclose(beta2, 2 * beta) and torch.equal(g, g2)
    # the decode still matches the full forward with beta in [0, 2]
    model = convert("llama", "gated_deltanet", 8, delta_negative_eigen=True)
    assert model.liger_config.delta_negative_eigen
    ids, mask = left_padded(T=40, pads=(0, 9))
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        inc, _ = incremental(model, ids, mask, [(0, 12)] + [(t, t + 1) for t in range(12, 40)])
        plain = convert("llama", "gated_deltanet", 8)(ids, attention_mask=mask).logits
    assert (inc - full)[mask.bool()].abs().max().item() <= ATOL
    assert not torch.allclose(full, plain)
    with pytest.raises(ConfigError, match="gated_deltanet"):
        liger.LigerConfig(mixer="gla", delta_negative_eigen=True)


# --- normalize: the gated-linear mixers divided by their normaliser ------------------------------------------


@pytest.mark.parametrize("mixer", ["gla", "hgrn2", "simple_gla", "retention"])
@pytest.mark.parametrize("window", [0, 8])
def test_normalized_prefill_then_decode_equals_full_forward_with_left_padding(mixer, window):
    model = convert("qwen3", mixer, window, normalize=True)
    ids, mask = left_padded(T=60)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        inc, cache = incremental(model, ids, mask, [(0, 33)] + [(t, t + 1) for t in range(33, 60)])
    assert (inc - full)[mask.bool()].abs().max().item() <= ATOL
    layer = cache.layers[0]
    assert layer.state.shape == (3, 2, 16, 17)  # [B, Hk, D, D + 1]: the normaliser is the last column
    assert liger.cache_nbytes(cache) == 3 * cache_footprint(model)["fixed"] + sum(  # + the softmax layer's KV
        t.numel() * t.element_size() for t in (cache.layers[1].keys, cache.layers[1].values))


@pytest.mark.parametrize("mixer", ["gla", "hgrn2", "simple_gla", "retention"])
def test_normalized_linear_branch_is_a_weighted_average_of_the_values(mixer):
    """Each output channel lies between the smallest and largest value of its head seen so far, at any length;
    unnormalised, the same branch grows with the context."""
    gen = torch.Generator().manual_seed(12)
    q, k = 3 * torch.randn(1, 1500, 4, 16, generator=gen), torch.randn(1, 1500, 2, 16, generator=gen)
    k = k + torch.linspace(-4, 8, 16)  # per-channel key offsets, as pretrained keys have: some decays near 1
    v = torch.randn(1, 1500, 2, 16, generator=gen) + 1.0
    cores = [liger.linearize(tiny_model("llama"), liger.LigerConfig(mixer=mixer, window=0, normalize=norm)
                             ).model.layers[0].self_attn.core for norm in (True, False)]
    o, _ = cores[0].linear(q, k, v, None, None, False)
    vmax = v.cummax(1).values.repeat_interleave(2, dim=2)  # query head h reads key/value head h // 2
    vmin = v.cummin(1).values.repeat_interleave(2, dim=2)
    tol = 1e-2 * v.abs().max()  # the eps added to q'z pulls an output slightly towards 0 where q'z is small
    assert (o <= vmax + tol).all() and (o >= vmin - tol).all() and o.abs().max() <= v.abs().max()
    if mixer == "gla":  # decays near 1 in some key channels: the unnormalised sum grows with the context
        raw, _ = cores[1].linear(q, k, v, None, None, False)
        assert raw[:, 1000:].abs().mean() > 3 * raw[:, :20].abs().mean()


def test_normalize_applies_to_the_unnormalised_mixers_only():
    for mixer in ("gsa", "gated_deltanet", "lawcat", "lolcats"):
        with pytest.raises(ConfigError, match="normalize applies to the mixers"):
            liger.LigerConfig(mixer=mixer, normalize=True)
    with pytest.raises(ConfigError, match="normalize must be true or false"):
        liger.LigerConfig(normalize="yes")
    assert liger.LigerConfig.from_dict({"mixer": "gla"}).normalize is False  # folders written before the field
    assert all(liger.LigerConfig(mixer=m).normalize for m in ("gla", "hgrn2", "simple_gla", "retention"))
    assert not any(liger.LigerConfig(mixer=m).normalize for m in ("gsa", "gated_deltanet", "lawcat", "lolcats"))
