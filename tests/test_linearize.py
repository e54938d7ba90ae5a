"""`liger linearize` end to end on a tiny model: outputs, recipes, resume after a kill, atomic outputs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file

import liger
from liger.cli import main
from liger.data import load_corpus
from liger.train.report import comparison_table


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer

    from liger.teacher import teacher_path

    root = tmp_path_factory.mktemp("lin")
    tok = AutoTokenizer.from_pretrained(teacher_path())
    model = tiny_model("llama", vocab_size=len(tok))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "data.txt").write_text("\n\n".join(load_corpus("builtin").train[:300]))
    return root


def args(setup, out, *extra):
    return ["linearize", "--model", str(setup / "model"), "--data", str(setup / "data.txt"), "--seq-len", "64",
            "--eval-blocks", "2", "--long-tokens", "256", "--max-steps", "6", "--checkpoint-every", "1", "--precision", "fp32", "--quiet",
            "--out", str(out), *extra]


def test_default_recipe_writes_a_complete_output(setup, tmp_path):
    assert main(args(setup, tmp_path / "out")) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    for key in ("teacher_ppl", "converted_ppl", "student_ppl", "ratio", "tokens_trained", "wall_seconds",
                "trainable_parameters"):
        assert key in report
    assert report["tokens_trained"] == 6 * 64 and report["recipe"] == "liger"
    assert report["trainable_parameters"] == 3 * 8 * (48 + 64) + 3 * 2 * 8 * (48 + 32)  # LoRA r=8 on q, k, v
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "| linearized, after training |" in (out / "report.md").read_text()
    assert not (tmp_path / "out.work").exists()
    table = comparison_table([out]).splitlines()  # the ablation table of docs/RESULTS.md is built this way
    ood = report["quality"]["trained"]["sets"]["ood"]
    assert len(table) == 3 and f"| {ood['ratio']:.3f} | {ood['top1']:.3f} |" in table[2]
    assert f"| {report['ratio']:.3f} |" in table[2]
    for model in ("converted", "trained"):  # out-of-domain and by-position figures of both, before the merge
        q = report["quality"][model]
        assert set(q["sets"]) == {"heldout", "ood"} and q["positions"]["tokens"] == 256
    assert report["quality"]["trained"]["sets"]["heldout"]["student_ppl"] == pytest.approx(report["student_ppl"],
                                                                                           rel=1e-4)
    assert "out-of-domain" in (out / "report.md").read_text() and (out / "positions.png").is_file()
    with pytest.raises(FileNotFoundError, match="output folder of `liger linearize`"):
        comparison_table([tmp_path])
    model = liger.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tiny_model("llama", vocab_size=49152).parameters())


def test_lolcats_recipe_and_distillation(setup, tmp_path):
    assert main(args(setup, tmp_path / "lol", "--recipe", "lolcats", "--mixer", "lolcats", "--transfer-tokens",
                     "256", "--distill", "kl")) == 0
    report = json.loads((tmp_path / "lol" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["attention_transfer", "lora"]
    assert report["stages"][0]["tokens"] == 256 and report["distill_weight"] == 1.0
    log = [json.loads(x) for x in (tmp_path / "lol" / "train_log.jsonl").read_text().splitlines()]
    assert "mse_mean" in log[0] and "kl" in log[-1]
    liger.from_pretrained(tmp_path / "lol")


def test_no_merge_keeps_the_adapter(setup, tmp_path):
    assert main(args(setup, tmp_path / "nm", "--no-merge")) == 0
    assert (tmp_path / "nm" / "adapter" / "adapter_config.json").is_file()
    model = liger.from_pretrained(tmp_path / "nm")
    assert hasattr(model, "peft_config")
    merged = model.merge_and_unload()
    assert merged.config.liger["mixer"] == "gla"


def test_killed_run_leaves_no_output_and_resumes_to_the_same_weights(setup, tmp_path):
    assert main(args(setup, tmp_path / "ref")) == 0
    cmd = [sys.executable, "-m", "liger.cli", *args(setup, tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "run.work" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (state.is_file() and json.loads(state.read_text())["step"] >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(state.read_text())["step"] < 6, "the run finished before it could be killed"
    assert not (tmp_path / "run").exists()  # no half-written output folder
    assert main(args(setup, tmp_path / "run", "--resume")) == 0
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kill_when(cmd, state, stage: str, step: int) -> None:
    """Run `cmd` and SIGKILL it once its checkpoint is at `step` of `stage`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            s = json.loads(state.read_text())
        except (OSError, ValueError):  # not written yet, or being replaced
            s = {}
        if s.get("stage") == stage and s.get("step", 0) >= step:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kill_in", ["align", "distill"])
def test_staged_recipe_resumes_exactly_after_a_kill_in_any_stage(setup, tmp_path, kill_in):
    staged = ("--recipe", "staged", "--max-steps", "12", "--align-fraction", "0.5", "--max-minutes", "0")
    assert main(args(setup, tmp_path / "ref", *staged)) == 0
    report = json.loads((tmp_path / "ref" / "report.json").read_text())
    assert [(s["stage"], s["steps"]) for s in report["stages"]] == [("align", 6), ("distill", 6)]
    log = [json.loads(x) for x in (tmp_path / "ref" / "train_log.jsonl").read_text().splitlines()]
    assert "nmse_mean" in log[0] and set(log[-1]) >= {"kl"} and "ce" not in log[-1]
    assert report["trainable_parameters"] == 3 * 8 * (48 + 64) + 3 * 2 * 8 * (48 + 32)  # one LoRA, both stages
    state = tmp_path / "run.work" / "checkpoint" / "state.json"
    _kill_when([sys.executable, "-m", "liger.cli", *args(setup, tmp_path / "run", *staged)], state, kill_in, 2)
    s = json.loads(state.read_text())
    assert s["stage"] == kill_in and s["step"] < 6, "the stage finished before it could be killed"
    assert main(args(setup, tmp_path / "run", *staged, "--resume")) == 0
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_errors(setup, tmp_path, capsys):
    assert main(args(setup, tmp_path / "x", "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    os.makedirs(tmp_path / "y.work")
    assert main(args(setup, tmp_path / "y", "--max-steps", "2", "--checkpoint-every", "1")) == 0


def test_bad_data_is_a_clear_error(setup, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    a = args(setup, tmp_path / "o")
    a[a.index("--data") + 1] = str(tmp_path / "empty.txt")
    assert main(a) == 2
    assert "no training text" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
