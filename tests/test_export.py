"""`liger export --to qwen3_5` (liger.export): the exported folder, loaded by transformers' own
Qwen3_5ForCausalLM (no liger import, no remote code), computes liger's logits and greedy tokens on tiny
models of every host architecture it takes; what it cannot map exactly it says and measures; bad input gets
one clear error."""

import json

import pytest
import torch
from conftest import tiny_model
from test_auto_model import run_python, save_tiny
from test_mixers import perturb
from transformers import AutoModelForCausalLM, Qwen3_5ForCausalLM

import liger
from liger.cli import main
from liger.errors import ConfigError, UnsupportedModelError
from liger.export import REPORT_FILE, export

ATOL = 1e-4


def native_model(arch, softmax_layers=(), seed=0, **kw):
    """A tiny `arch` model linearized with native_gdn, every mixer parameter moved off its initial value."""
    model = liger.linearize(tiny_model(arch, **kw), liger.LigerConfig(mixer="native_gdn", softmax_layers=softmax_layers))
    perturb(model, seed)
    return model


def ids(B=2, T=40, seed=1):
    return torch.randint(0, 128, (B, T), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def greedy(model, x, n=10):
    with torch.no_grad():
        return model.generate(x, max_new_tokens=n, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("arch,softmax_layers", [("llama", ()), ("mistral", ()), ("qwen3", ()), ("qwen3", (1,)),
                                                  ("qwen3", (0, 2))])
def test_exported_model_equals_liger(arch, softmax_layers, tmp_path):
    """Logits (prefill) and greedy tokens (the native cache: conv state, recurrent state, KV) equal liger's."""
    model = native_model(arch, softmax_layers, tie_word_embeddings=arch == "llama")
    report = export(model, "qwen3_5", tmp_path / "out", check_ids=ids(1, 32, seed=9))
    assert report.exact and not report.notes and report.max_abs_logit_diff <= ATOL
    native = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(native) is Qwen3_5ForCausalLM
    kinds = native.config.layer_types
    assert kinds[:3] == ["full_attention" if i in softmax_layers else "linear_attention" for i in range(3)]
    assert len(kinds) == 3 + (not softmax_layers)  # an all-linear model gets the identity full-attention layer
    x = ids()
    assert (logits(native, x) - logits(model, x)).abs().max().item() <= ATOL
    assert torch.equal(greedy(native, x[:1, :12]), greedy(model, x[:1, :12]))
    saved = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert saved["exact"] and saved["target"] == "qwen3_5"


def test_plain_transformers_runs_the_export_without_liger(tmp_path):
    model = native_model("llama")
    export(model, "qwen3_5", tmp_path / "out")
    x = ids(1, 16)
    want = greedy(model, x, 8)[0].tolist()
    result = run_python(f"""
        import torch, transformers
        m = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / "out")!r})
        out = m.generate(torch.tensor([{x[0].tolist()}]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        print(type(m).__name__, out[0].tolist())
    """, tmp_path, block_liger=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"Qwen3_5ForCausalLM {want}"


def test_llama_softmax_layer_is_mapped_closely_and_says_it_is_not_exact(tmp_path):
    """Qwen3.5's full attention has per-head q/k RMSNorms a Llama lacks: the export notes it, calibrates them to
    the host's mean RMS on the check tokens (closer than unit norms) and measures the difference."""
    model = native_model("llama", softmax_layers=(1,))
    x = ids(1, 64, seed=5)
    calibrated = export(model, "qwen3_5", tmp_path / "a", check_ids=x)
    unit = export(model, "qwen3_5", tmp_path / "b")
    assert not calibrated.exact and any("layer 1" in n and "not exact" in n for n in calibrated.notes)
    native_unit = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    unit_diff = (logits(native_unit, x) - logits(model, x)).abs().max().item()
    assert 0 < calibrated.max_abs_logit_diff < unit_diff
    assert not unit.exact and unit.max_abs_logit_diff is None  # no check tokens: nothing measured


def test_export_merges_unmerged_lora(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = native_model("qwen3")
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "k_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    x = ids()
    want = logits(peft, x)
    export(peft, "qwen3_5", tmp_path / "out")
    assert (logits(AutoModelForCausalLM.from_pretrained(tmp_path / "out"), x) - want).abs().max().item() <= ATOL


@pytest.mark.parametrize("case,error,match", [
    ("not linearized", ConfigError, "linearized model"),
    ("gla mixer", ConfigError, "native_gdn"),
    ("llama with biases", UnsupportedModelError, "biases"),
    ("gemma2 host", UnsupportedModelError, "llama, mistral, qwen3"),
    ("unknown target", ConfigError, "exports to: qwen3_5"),
])
def test_clear_errors(case, error, match, tmp_path):
    model = {
        "not linearized": lambda: tiny_model("llama"),
        "gla mixer": lambda: liger.linearize(tiny_model("llama"), liger.LigerConfig()),
        "llama with biases": lambda: native_model("llama", attention_bias=True),
        "gemma2 host": lambda: liger.linearize(tiny_model("gemma2"), liger.LigerConfig(mixer="native_gdn")),
        "unknown target": lambda: native_model("llama"),
    }[case]()
    with pytest.raises(error, match=match):
        export(model, "gguf" if case == "unknown target" else "qwen3_5", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_export(tmp_path, capsys):
    save_tiny("llama", tmp_path / "m", tokenizer=True, mixer="native_gdn", window=0)
    assert main(["export", str(tmp_path / "m"), "--to", "qwen3_5", "--out", str(tmp_path / "out"),
                 "--check-tokens", "32"]) == 0
    out = capsys.readouterr().out
    assert "3 linear_attention, 1 full_attention" in out and "exact up to float rounding" in out
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert main(["export", str(tmp_path / "m"), "--to", "qwen3_5", "--out", str(tmp_path / "out2"),
                 "--check-tokens", "0"]) == 2  # out of bounds: one line, exit 2
    save_tiny("llama", tmp_path / "g", tokenizer=True)
    assert main(["export", str(tmp_path / "g"), "--to", "qwen3_5", "--out", str(tmp_path / "out3")]) == 2
    assert "--mixer native_gdn" in capsys.readouterr().err


def test_engines_bench_runs_liger_and_the_export_alike(tmp_path, capsys):
    """bench/engines.py's liger and transformers runs: same greedy tokens, a decode time per context."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("engines", Path(__file__).parents[1] / "bench" / "engines.py")
    engines = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(engines)
    model = native_model("llama")
    model.save_pretrained(tmp_path / "m")
    export(model, "qwen3_5", tmp_path / "n")
    (tmp_path / "ids.json").write_text(json.dumps({"prompt_ids": ids(1, 12)[0].tolist(),
                                                   "contexts": {"24": ids(1, 24, seed=4)[0].tolist()}}))
    out = str(tmp_path / "r.jsonl")
    engines.main(["liger", "--model", str(tmp_path / "m"), "--ids", str(tmp_path / "ids.json"), "--out", out,
                  "--tokens", "6", "--steps", "2", "--threads", "1"])
    engines.main(["hf", "--model", str(tmp_path / "n"), "--ids", str(tmp_path / "ids.json"), "--out", out,
                  "--tokens", "6", "--steps", "2", "--threads", "1"])
    capsys.readouterr()
    engines.main(["table", out])
    table = capsys.readouterr().out
    assert table.count("| 6/6 |") == 2 and "Qwen3_5ForCausalLM" not in table  # rows: liger, transformers
    rows = [json.loads(line) for line in open(out)]
    assert rows[1]["class"] == "Qwen3_5ForCausalLM" and all(r["decode_ms"]["24"] > 0 for r in rows)
