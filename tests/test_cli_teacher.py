"""The bundled SmolLM2 teacher end to end through the CLI: convert, info, generate, save/load."""

import json
import subprocess
import sys

import pytest
import torch

import liger
from liger.cli import main
from liger.teacher import teacher_path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "smol-liger"
    assert main(["convert", "--model", "bundled", "--out", str(out), "--softmax-layers", "0,15"]) == 0
    return out


def test_convert_writes_a_checkpoint(converted):
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["liger"]["softmax_layers"] == [0, 15]
    assert cfg["model_type"] == "liger" and cfg["host"]["model_type"] == "llama"  # liger.hf_config's form
    assert (converted / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((teacher_path() / "config.json").read_text())


def test_info(converted, capsys):
    assert main(["info", str(converted), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == 30 and info["layer_kinds"][0] == "softmax" and info["layer_kinds"][1] == "gla+window64"
    assert info["parameters"] == 134_515_008
    assert info["original_kv_bytes_per_token"] == 30 * 2 * 3 * 64 * 4
    assert info["kv_bytes_per_token"] == 2 * 2 * 3 * 64 * 4


@pytest.mark.parametrize("weights,tokens", [("float32", 12), ("int8", 8)])
def test_generate_streams_the_models_tokens(converted, capfd, weights, tokens):
    """`liger generate` prints what `model.generate` gives; with --weights, the model in that format."""
    from transformers import AutoTokenizer

    from liger.quantize import quantize_weights

    assert main(["generate", "--model", str(converted), "--prompt", "The capital of France is", "--raw",
                 "--max-new-tokens", str(tokens), "--weights", weights]) == 0
    printed = capfd.readouterr().out
    model = quantize_weights(liger.from_pretrained(converted), weights)
    tok = AutoTokenizer.from_pretrained(converted)
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
    assert expected.strip() and printed.strip() == expected.strip()


def test_save_load_identical_logits(converted, tmp_path):
    model = liger.from_pretrained(converted)
    model.save_pretrained(tmp_path / "again")
    again = liger.from_pretrained(tmp_path / "again")
    ids = torch.randint(0, 49152, (1, 80))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["convert", "--model", "./no/such/model", "--out", "{tmp}/o"], "does not exist"),
        (["convert", "--model", "bundled", "--out", "{tmp}/o", "--window", "-1"], "window must be"),
        (["convert", "--model", "bundled", "--out", "{tmp}/o", "--softmax-layers", "0,30"], "out of range"),
        (["generate", "--model", "{tmp}/nothing", "--prompt", "hi"], "does not exist"),
        (["info", "{tmp}"], "no config.json"),
    ],
)
def test_errors_are_one_line_without_traceback(argv, match, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    r = subprocess.run([sys.executable, "-m", "liger.cli", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert match in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_help_for_every_command():
    for cmd in ("convert", "generate", "info"):
        r = subprocess.run([sys.executable, "-m", "liger.cli", cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: liger " + cmd in r.stdout

