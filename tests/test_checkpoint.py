"""save_pretrained / from_pretrained round trip, atomic writes, and clear errors."""

import json

import pytest
import torch
from conftest import ARCHS, MORE_ARCHS, tiny_model

import liger
from liger.atomic import atomic_output_dir


def test_roundtrip_identical_logits(tmp_path):
    model = liger.linearize(tiny_model("qwen3"), liger.LigerConfig(window=8, softmax_layers=[1], mix=(0.3, 0.7)))
    model.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["liger"]["softmax_layers"] == [1] and cfg["liger"]["mix"] == [0.3, 0.7]
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    loaded = liger.from_pretrained(tmp_path / "ckpt")
    assert loaded.liger_config == model.liger_config
    ids = torch.randint(0, 128, (2, 50))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_resave_keeps_other_files(tmp_path):
    model = liger.linearize(tiny_model("llama"))
    model.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == "{}"


def test_interrupted_save_leaves_previous_checkpoint(tmp_path):
    model = liger.linearize(tiny_model("llama"))
    model.save_pretrained(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(tmp_path / "ckpt") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_refuses_to_overwrite_a_plain_model(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(liger.CheckpointError, match="not a liger checkpoint; refusing"):
        liger.linearize(tiny_model("llama")).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_missing_path(tmp_path):
    with pytest.raises(liger.CheckpointError, match="does not exist"):
        liger.from_pretrained(tmp_path / "nope")


def test_not_a_liger_checkpoint(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(liger.CheckpointError, match="not a liger checkpoint.*liger convert"):
        liger.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(liger.CheckpointError, match="no config.json"):
        liger.from_pretrained(tmp_path)


def test_corrupted_weights(tmp_path):
    liger.linearize(tiny_model("llama")).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(liger.CheckpointError, match="cannot load the weights"):
        liger.from_pretrained(tmp_path)


def test_roundtrip_keeps_mixer_parameters(tmp_path):
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(mixer="lolcats", window=8))
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if ".core." in n):
            p.add_(torch.randn_like(p))
    model.save_pretrained(tmp_path)
    loaded = liger.from_pretrained(tmp_path)
    ids = torch.randint(0, 128, (1, 40))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_roundtrip_every_architecture(arch, tmp_path):
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(window=8, softmax_layers=[0]))
    model.save_pretrained(tmp_path)
    loaded = liger.from_pretrained(tmp_path)
    ids = torch.randint(1, 128, (1, 30))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
