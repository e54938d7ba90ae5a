"""A liger folder is its own model type ("liger", liger.hf_config / liger.hf_auto): transformers' Auto classes and
pipelines load the linearized model once liger is imported, plain transformers refuses the folder, the
remote-code file loads it with trust_remote_code=True, and folders of the old form still load."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from conftest import tiny_model
from transformers import AutoConfig, AutoModelForCausalLM

import liger
from liger.hf_config import ARCHITECTURE, MODEL_TYPE, REMOTE_CODE_FILE, LigerModelConfig
from liger.mixers import LigerAttention
from liger.models import load_model, read_config

# A folder written by liger before the "liger" model type (commit 3643a89): config.json says model_type "llama"
# plus a "liger" entry. Made by linearizing a random 2-layer LlamaForCausalLM (vocab 64, hidden 32, 2 heads, 1 KV
# head, head_dim 16, tied embeddings, q/k/v weights x8, seed 0) with LigerConfig(mixer="lolcats", window=4,
# softmax_layers=[1]), its feature maps perturbed by 0.1 * randn, then `save_pretrained`; expected_logits.json
# holds that model's logits (first 16 vocabulary entries) on its input_ids, computed before saving.
OLD_FOLDER = Path(__file__).parent / "fixtures" / "liger_folder_v0"
SRC = str(Path(liger.__file__).parents[1])


def save_tiny(arch: str, path: Path, tokenizer: bool = False, **liger_kwargs) -> torch.nn.Module:
    """A tiny linearized model of `arch` saved to `path` (with a word-level tokenizer if asked); returns it."""
    model = liger.linearize(tiny_model(arch), liger.LigerConfig(**{"window": 8, **liger_kwargs}))
    model.save_pretrained(path)
    if tokenizer:
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 128)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                             eos_token="</s>").save_pretrained(path)
    return model


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def run_python(code: str, tmp_path: Path, block_liger: bool = False) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports this checkout's liger only if the code does (or never,
    with block_liger); transformers' remote-code cache in tmp_path, no network, no stdin."""
    prelude = "import sys\nsys.modules['liger'] = None  # as if liger were not installed\n" if block_liger else ""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "phi3"])
def test_auto_classes_load_the_linearized_model(arch, tmp_path):
    """llama; gemma3_text (q/k norms, layer_types, query_pre_attn_scalar); phi3 (fused qkv, partial RoPE): one
    implementation for every host, the host's config travelling as data."""
    folder = tmp_path / "m"
    model = save_tiny(arch, folder, softmax_layers=[0])
    raw = json.loads((folder / "config.json").read_text())
    assert raw["model_type"] == MODEL_TYPE and raw["architectures"] == [ARCHITECTURE]
    assert raw["host"]["model_type"] == arch and "liger" not in raw["host"]
    assert raw["liger"] == model.config.liger
    assert raw["auto_map"]["AutoModelForCausalLM"] == f"modeling_liger.{ARCHITECTURE}"
    assert (folder / REMOTE_CODE_FILE).is_file()

    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, LigerModelConfig)
    host = config.host_config()
    assert host.model_type == arch and host.liger == model.config.liger
    assert host.num_hidden_layers == 3

    ids = torch.randint(1, 128, (2, 21))
    expected = logits(liger.from_pretrained(folder), ids)
    auto = AutoModelForCausalLM.from_pretrained(folder)
    assert type(auto).__name__ == type(model).__name__  # the host's own class, linearized in place
    assert auto.config.model_type == arch and auto.liger_config == model.liger_config
    assert [isinstance(layer.self_attn, LigerAttention) for layer in auto.model.layers] == [False, True, True]
    torch.testing.assert_close(logits(auto, ids), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(auto, ids), logits(model, ids), rtol=1e-5, atol=1e-5)


def test_plain_softmax_logits_differ(tmp_path):
    """The linearized logits differ from the softmax model of the same weights, so the comparisons of this file
    would catch a silent softmax load."""
    folder = tmp_path / "m"
    model = save_tiny("llama", folder)
    softmax = tiny_model("llama")
    ids = torch.randint(1, 128, (1, 30))
    assert (logits(AutoModelForCausalLM.from_pretrained(folder), ids) - logits(softmax, ids)).abs().max() > 1e-2
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(folder), ids), logits(model, ids))


def test_pipeline_generates_what_liger_generates(tmp_path):
    folder = tmp_path / "m"
    save_tiny("qwen3", folder, tokenizer=True)
    pipe = transformers.pipeline("text-generation", model=str(folder))
    assert pipe.model.liger_config.window == 8
    ref = liger.from_pretrained(folder)
    ids = torch.randint(3, 128, (1, 17))
    torch.testing.assert_close(logits(pipe.model, ids), logits(ref, ids), rtol=1e-5, atol=1e-5)
    prompt = "w5 w9 w17 w40 w3"
    out = pipe(prompt, max_new_tokens=8, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    enc = pipe.tokenizer(prompt, return_tensors="pt")
    want = ref.generate(**enc, max_new_tokens=8, do_sample=False)[0].tolist()
    assert list(out) == want and len(want) == enc["input_ids"].shape[1] + 8


def test_from_config_builds_a_linearized_model(tmp_path):
    folder = tmp_path / "m"
    save_tiny("mistral", folder, mixer="gated_deltanet")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    assert type(model).__name__ == "MistralForCausalLM" and model.liger_config.mixer == "gated_deltanet"
    assert all(isinstance(layer.self_attn, LigerAttention) for layer in model.model.layers)
    with pytest.raises(TypeError, match="loader"):
        liger.LigerForCausalLM()


def test_save_load_save_keeps_the_model_type(tmp_path):
    model = save_tiny("qwen2", tmp_path / "a", mixer="lolcats")
    with torch.no_grad():  # the mixer's own parameters must survive both saves
        for p in (p for n, p in model.named_parameters() if ".core." in n):
            p.add_(torch.randn_like(p))
    model.save_pretrained(tmp_path / "a")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    loaded.save_pretrained(tmp_path / "b")
    first, second = (json.loads((tmp_path / f / "config.json").read_text()) for f in "ab")
    assert second["model_type"] == MODEL_TYPE and second["architectures"] == [ARCHITECTURE]
    assert second["host"] == first["host"] and second["liger"] == first["liger"]
    assert (tmp_path / "b" / REMOTE_CODE_FILE).read_text() == (tmp_path / "a" / REMOTE_CODE_FILE).read_text()
    ids = torch.randint(1, 128, (1, 25))
    assert torch.equal(logits(liger.from_pretrained(tmp_path / "b"), ids), logits(model, ids))


def test_liger_readers_of_a_folder(tmp_path):
    """What the CLI reads before and while loading (`liger eval`, `generate`, `convert`'s checks): the host's
    config with `.liger`, and the linearized model."""
    folder = tmp_path / "m"
    model = save_tiny("llama", folder, tokenizer=True, softmax_layers=[2])
    config = read_config(str(folder))
    assert config.model_type == "llama" and config.liger["softmax_layers"] == [2]
    assert config.max_position_embeddings == 4096
    loaded, tok = load_model(str(folder))
    assert loaded.liger_config == model.liger_config and len(tok) == 128


def test_plain_transformers_refuses_the_folder(tmp_path):
    """Without liger, transformers never loads the trained weights as a softmax model: it asks for remote code
    (refused without a terminal), and with trust_remote_code=True the folder's file says how to install liger."""
    folder = tmp_path / "m"
    save_tiny("llama", folder)
    bare = tmp_path / "no_auto_map"  # a folder whose remote-code entry was removed: an unknown model type
    shutil.copytree(folder, bare)
    raw = json.loads((bare / "config.json").read_text())
    del raw["auto_map"]
    (bare / "config.json").write_text(json.dumps(raw))
    result = run_python(f"""
        import json
        from transformers import AutoConfig, AutoModelForCausalLM, pipeline
        out = {{}}
        for name, load in [
            ("auto", lambda: AutoModelForCausalLM.from_pretrained({str(folder)!r})),
            ("auto_untrusted", lambda: AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=False)),
            ("pipeline", lambda: pipeline("text-generation", model={str(folder)!r})),
            ("config_no_auto_map", lambda: AutoConfig.from_pretrained({str(bare)!r})),
            ("remote", lambda: AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)),
        ]:
            try:
                model = load()
                out[name] = "loaded " + type(model).__name__
            except Exception as e:
                out[name] = type(e).__name__ + ": " + str(e)
        print()  # after the [y/N] prompts that transformers prints
        print("RESULT" + json.dumps(out))
    """, tmp_path, block_liger=True)
    assert "\nRESULT" in result.stdout, result.stdout + result.stderr
    out = json.loads(result.stdout.split("\nRESULT", 1)[1])
    for name in ("auto", "auto_untrusted", "pipeline"):
        assert out[name].startswith("ValueError") and "trust_remote_code=True" in out[name], out[name]
    assert out["config_no_auto_map"].startswith("ValueError") and "liger" in out["config_no_auto_map"]
    assert out["remote"].startswith("ImportError") and "needs the liger package" in out["remote"]
    assert "pip install -e" in out["remote"], out["remote"]


def test_remote_code_loads_through_the_folders_file(tmp_path):
    """trust_remote_code=True in a process that has not imported liger: transformers runs modeling_liger.py,
    which imports liger; the model equals liger.from_pretrained's."""
    folder = tmp_path / "m"
    save_tiny("qwen3", folder, softmax_layers=[1])
    ids = torch.randint(1, 128, (1, 19))
    torch.save(ids, tmp_path / "ids.pt")
    result = run_python(f"""
        import sys, torch
        from transformers import AutoConfig, AutoModelForCausalLM
        assert "liger" not in sys.modules
        config = AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert "liger" in sys.modules and type(config).__name__ == "LigerModelConfig"
        assert type(config).__module__ == "liger.hf_config", type(config).__module__
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / "ids.pt")!r})).logits, {str(tmp_path / "out.pt")!r})
        print("CLASS", type(model).__name__, model.liger_config.softmax_layers)
    """, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CLASS Qwen3ForCausalLM (1,)" in result.stdout
    modules = list((tmp_path / "hf_modules").rglob(REMOTE_CODE_FILE))
    assert modules, "transformers did not go through the folder's remote-code file"
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), logits(liger.from_pretrained(folder), ids),
                               rtol=1e-5, atol=1e-5)
    # with liger imported, trust_remote_code=True changes nothing: the registered classes are used
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True), ids),
                               logits(liger.from_pretrained(folder), ids), rtol=1e-5, atol=1e-5)


def test_remote_code_file_names_the_install_when_liger_is_missing(tmp_path):
    """The saved file itself, executed with liger blocked: an ImportError that says how to install liger."""
    folder = tmp_path / "m"
    save_tiny("llama", folder)
    result = run_python(f"exec(open({str(folder / REMOTE_CODE_FILE)!r}).read())", tmp_path, block_liger=True)
    assert result.returncode != 0
    assert "ImportError: This folder holds a liger model" in result.stderr
    assert "pip install -e /path/to/liger" in result.stderr and "'liger'" in result.stderr


def test_old_folder_loads_and_migrates(tmp_path):
    """A folder of the old form (host model_type plus a "liger" entry) loads through liger.from_pretrained with
    the logits recorded when it was made, with a warning; saving it again writes the "liger" model type."""
    expected = json.loads((OLD_FOLDER / "expected_logits.json").read_text())
    ids = torch.tensor(expected["input_ids"])
    want = torch.tensor(expected["logits_first_16"])
    assert json.loads((OLD_FOLDER / "config.json").read_text())["model_type"] == "llama"
    with pytest.warns(UserWarning, match="older liger.*plain softmax model.*save_pretrained"):
        model = liger.from_pretrained(OLD_FOLDER)
    assert model.liger_config.mixer == "lolcats" and model.liger_config.softmax_layers == (1,)
    torch.testing.assert_close(logits(model, ids)[0, :, :16], want, rtol=1e-4, atol=1e-5)

    # The limitation: transformers reads the old folder's host model_type and never asks liger, so the Auto
    # classes load it as a plain softmax model (even with liger imported). Re-saving is the fix.
    plain = AutoModelForCausalLM.from_pretrained(OLD_FOLDER)
    assert not any(isinstance(m, LigerAttention) for m in plain.modules())
    assert (logits(plain, ids)[0, :, :16] - want).abs().max() > 1e-3

    folder = tmp_path / "old"
    shutil.copytree(OLD_FOLDER, folder)
    with pytest.warns(UserWarning, match="older liger"):
        old = liger.from_pretrained(folder)
    old.save_pretrained(folder)  # the migration the warning suggests, in place
    raw = json.loads((folder / "config.json").read_text())
    assert raw["model_type"] == MODEL_TYPE and raw["host"]["model_type"] == "llama"
    assert (folder / "expected_logits.json").is_file()  # other files of the folder are kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for the new form
        migrated = AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(logits(migrated, ids)[0, :, :16], want, rtol=1e-4, atol=1e-5)


def test_damaged_liger_config(tmp_path):
    folder = tmp_path / "m"
    save_tiny("llama", folder)
    raw = json.loads((folder / "config.json").read_text())
    for host, match in [(None, "needs a \"host\" object"),
                        ({"model_type": "no_such_model"}, "unknown to transformers")]:
        (folder / "config.json").write_text(json.dumps({**raw, "host": host}))
        with pytest.raises(liger.CheckpointError, match=match):
            liger.from_pretrained(folder)
