"""linearize(): in place, no new parameters, one wrapper for every supported architecture, clear errors."""

import pytest
import torch
import transformers
from conftest import ARCHS, MORE_ARCHS, tiny_model

import liger
from liger.mixers import LigerAttention


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_reuses_weights_without_new_parameters(arch):
    model = tiny_model(arch)
    before = {n: p for n, p in model.named_parameters()}
    n0 = sum(p.numel() for p in model.parameters())
    liger.linearize(model)
    after = dict(model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) == n0
    assert after.keys() == before.keys()  # same state-dict names (LoRA targets, checkpoints)
    assert all(after[n] is before[n] for n in before)  # the same tensors: nothing copied
    assert all(isinstance(layer.self_attn, LigerAttention) for layer in model.model.layers)
    mlp_types = {type(layer.mlp) for layer in model.model.layers}
    assert mlp_types == {type(tiny_model(arch).model.layers[0].mlp)}  # MoE / MLP blocks untouched
    assert isinstance(model, type(tiny_model(arch)))  # still the host class
    assert model.config.liger["mixer"] == "gla"


def test_softmax_layers_are_untouched():
    model = tiny_model("llama", layers=4)
    originals = [layer.self_attn for layer in model.model.layers]
    liger.linearize(model, liger.LigerConfig(softmax_layers=[0, 3]))
    kinds = [type(layer.self_attn).__name__ for layer in model.model.layers]
    assert kinds == ["LlamaAttention", "LigerAttention", "LigerAttention", "LlamaAttention"]
    assert model.model.layers[3].self_attn is originals[3]


def test_qwen3_norms_and_qwen2_biases_are_used():
    q3 = liger.linearize(tiny_model("qwen3"))
    attn = q3.model.layers[0].self_attn
    assert hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
    x = torch.randn(1, 5, 48)
    q, k, _ = attn.project(x)
    ref = attn.q_norm(attn.q_proj(x).view(1, 5, -1, 16))
    assert torch.allclose(q, ref)
    q2 = liger.linearize(tiny_model("qwen2"))
    assert q2.model.layers[0].self_attn.q_proj.bias is not None


def test_window_zero_is_pure_gla():
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(window=0))
    ids = torch.randint(0, 128, (1, 30))
    with torch.no_grad():
        a = model(ids).logits
        for layer in model.model.layers:  # the window branch must not run at all
            layer.self_attn.apply_rope = None
        b = model(ids).logits
    assert torch.equal(a, b)


def test_unsupported_architecture():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)
    with pytest.raises(liger.UnsupportedModelError, match=r"'gpt2'.*gemma2.*gemma3_text.*llama.*mistral.*mixtral.*phi3.*qwen2.*qwen3.*qwen3_moe"):
        liger.linearize(transformers.GPT2LMHeadModel(cfg))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(window=-1), "window must be"),
        (dict(window=2.5), "window must be"),
        (dict(mixer="mamba"), "unknown mixer"),
        (dict(mix=(1.0,)), "mix must be two numbers"),
        (dict(gate_normalizer=0), "gate_normalizer"),
        (dict(softmax_layers=["a"]), "softmax_layers must be"),
        (dict(softmax_layers=[-1]), "softmax_layers must be >= 0"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(liger.ConfigError, match=match):
        liger.LigerConfig(**kwargs)


def test_softmax_layer_out_of_range_loses_nothing():
    model = tiny_model("llama", layers=3)
    with pytest.raises(liger.ConfigError, match=r"softmax_layers \[3\] out of range.*3 layers"):
        liger.linearize(model, liger.LigerConfig(softmax_layers=[3]))
    assert not any(isinstance(layer.self_attn, LigerAttention) for layer in model.model.layers)
    assert getattr(model.config, "liger", None) is None


def test_linearize_twice_is_an_error():
    model = liger.linearize(tiny_model("llama"))
    with pytest.raises(liger.ConfigError, match="already linearized"):
        liger.linearize(model)


def test_gradients_reach_the_reused_projections():
    model = liger.linearize(tiny_model("llama")).train()
    ids = torch.randint(0, 128, (2, 40))
    model(ids, labels=ids, use_cache=False).loss.backward()
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        grad = getattr(model.model.layers[0].self_attn, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_lolcats_adds_only_feature_maps_and_window_factors():
    model = tiny_model("llama")
    n0 = sum(p.numel() for p in model.parameters())
    liger.linearize(model, liger.LigerConfig(mixer="lolcats"))
    added = {n: p.numel() for n, p in model.named_parameters() if ".core." in n}
    per_layer = 4 * 16 * 16 + 2 * 16 * 16 + 4  # q maps (4 heads), k maps (2 kv heads), window factors
    assert sum(added.values()) == 3 * per_layer
    assert sum(p.numel() for p in model.parameters()) == n0 + 3 * per_layer


def test_feature_map_must_match_mixer():
    with pytest.raises(liger.ConfigError, match="does not go with mixer"):
        liger.LigerConfig(mixer="gla", feature_map="hedgehog")
    assert liger.LigerConfig(mixer="lolcats").feature_map == "hedgehog"


def test_transfer_mode_outputs_softmax_attention_and_records_error():
    from liger.train.recipes import transfer_mode

    base = tiny_model("llama")
    with torch.no_grad():
        ref = base(torch.arange(1, 41)[None]).logits
    model = liger.linearize(base, liger.LigerConfig(mixer="lolcats", window=8))
    transfer_mode(model, True)
    with torch.no_grad():
        out = model(torch.arange(1, 41)[None]).logits
    assert (out - ref).abs().max() < 1e-4  # every layer passes the teacher's attention on
    losses = [m.transfer_loss for m in model.modules() if hasattr(m, "transfer_loss")]
    assert len(losses) == 3 and all(float(x) > 0 for x in losses)


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_transfer_mode_reproduces_the_host_attention(arch):
    """In transfer mode every mixer passes on its host's own softmax attention (RoPE incl. partial, scaling,
    soft-capping, sliding windows, q/k norms, fused qkv): the model must equal the original."""
    from liger.train.recipes import transfer_mode

    base = tiny_model(arch)
    ids = torch.arange(1, 41)[None]
    with torch.no_grad():
        ref = base(ids).logits
    model = liger.linearize(base, liger.LigerConfig(window=8))
    transfer_mode(model, True)
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() < 1e-4


def test_lora_targets_follow_the_table():
    from liger.arch import ARCHITECTURES

    assert ARCHITECTURES["llama"].lora_targets("qkv") == ["q_proj", "k_proj", "v_proj"]
    assert ARCHITECTURES["phi3"].lora_targets("qkvo") == ["qkv_proj", "o_proj"]


def test_softmax_layers_flag_accepts_lists_and_ranges():
    from liger.cli.flags import layer_list as _layer_list

    assert _layer_list("0,15") == (0, 15) and _layer_list("0-3,8") == (0, 1, 2, 3, 8) and _layer_list("") == ()
    with pytest.raises(liger.ConfigError, match="ranges"):
        _layer_list("a-b")


def test_softmax_every_keeps_one_layer_in_n():
    model = liger.linearize(tiny_model("llama", layers=8), liger.LigerConfig(softmax_every=4, softmax_layers=[0]))
    kinds = [type(layer.self_attn).__name__ == "LigerAttention" for layer in model.model.layers]
    assert [i for i, lin in enumerate(kinds) if not lin] == [0, 3, 7]
    with pytest.raises(liger.ConfigError, match="softmax_every 9"):
        liger.linearize(tiny_model("llama", layers=8), liger.LigerConfig(softmax_every=9))


@pytest.mark.parametrize("mixer", ["hgrn2", "simple_gla", "retention"])
def test_gated_mixers_add_no_parameters(mixer):
    model = tiny_model("qwen2")
    n0 = sum(p.numel() for p in model.parameters())
    liger.linearize(model, liger.LigerConfig(mixer=mixer))
    assert sum(p.numel() for p in model.parameters()) == n0
