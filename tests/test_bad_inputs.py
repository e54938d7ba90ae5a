"""Every bad input a user can give ends as exit code 2 and one line on stderr naming the flag or value, the
cause and the fix: `liger.cli.main` on tiny models, no training, no network. Plus the memory estimate."""

from __future__ import annotations

import argparse
import json
import math
import shutil

import pytest
import torch
from conftest import tiny_model
from transformers.utils import logging as hf_logging

import liger
from liger.cli import build_parser, main
from liger.cli.flags import Bounds
from liger.config import LigerConfig
from liger.errors import ConfigError
from liger import memory_estimate as me
from liger.evaluate.runner import EvalOptions, check_options, memory_parts

LIMIT = 1024  # max_position_embeddings of the tiny models


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Tiny models with the bundled tokenizer: a plain teacher, its linearized student, broken checkpoints."""
    from transformers import AutoTokenizer

    from liger.teacher import teacher_path

    tok = AutoTokenizer.from_pretrained(teacher_path())
    root = tmp_path_factory.mktemp("bad")
    teacher = tiny_model("llama", vocab_size=len(tok), max_position_embeddings=LIMIT)
    teacher.save_pretrained(root / "teacher")
    student = liger.linearize(tiny_model("llama", vocab_size=len(tok), max_position_embeddings=LIMIT),
                              LigerConfig(window=16))
    student.save_pretrained(root / "student")
    with torch.no_grad():
        next(student.parameters()).fill_(float("nan"))
    student.save_pretrained(root / "nan")
    for name in ("teacher", "student", "nan"):
        tok.save_pretrained(root / name)
    for name, liger_entry in [("null", None), ("string", "gla"), ("huge_window", {"window": 10**12}),
                              ("bad_value", {"window": "wide"})]:
        shutil.copytree(root / "student", root / name)
        cfg = json.loads((root / name / "config.json").read_text())
        cfg["liger"] = liger_entry
        (root / name / "config.json").write_text(json.dumps(cfg))
    (root / "fields.jsonl").write_text("".join(json.dumps({"body": f"text {i}", "id": i}) + "\n" for i in range(50)))
    return root


@pytest.fixture(autouse=True)
def _no_loading_bars():
    """transformers draws a "Loading weights" bar on stderr for each load; the rows that load a model count the
    lines liger prints."""
    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def convert(*extra):
    return ["convert", "--model", "{root}/teacher", "--out", "{tmp}/out", *extra]


def linearize(*extra):
    return ["linearize", "--model", "{root}/teacher", "--out", "{tmp}/out", "--quiet", *extra]


def generate(*extra, model="student"):
    return ["generate", "--model", "{root}/" + model, "--prompt", "hello", "--raw", *extra]


def evaluate(*extra, model="student"):
    return ["eval", "--model", "{root}/" + model, "--teacher", "{root}/teacher", "--out", "{tmp}/out", "--quiet",
            *extra]


def bench(kind, *extra):
    return ["bench", kind, "--out", "{tmp}/out", "--tiny-model", *extra]


# (argv, a piece the one-line message must hold)
ROWS = [
    # output folders that cannot be written
    (convert()[:4] + ["/proc/x"], "--out /proc/x cannot be written"),
    (convert()[:4] + ["/sys/x"], "--out /sys/x cannot be written"),
    (evaluate()[:6] + ["/proc/x"], "--out /proc/x cannot be written"),
    (evaluate()[:6] + ["/sys/x/y"], "--out /sys/x/y cannot be written"),
    # the LigerConfig flags
    (convert("--window", "1000000000000"), "--window 1000000000000 is longer than the model's context limit of 1024"),
    (linearize("--window", "1000000000"), "--window 1000000000 is longer than the model's context limit of 1024"),
    (convert("--window", "-1"), "--window must be a whole number >= 0, got -1"),
    (convert("--sparse-cache", "-3"), "--sparse-cache must be a whole number >= 0, got -3"),
    (linearize("--window", "0", "--sparse-cache", "8"), "the sparse cache joins the window's softmax"),
    (convert("--window", "wide"), "argument --window: invalid int value: 'wide'"),
    (convert("--softmax-layers", "3-1"), "--softmax-layers range '3-1' runs backwards"),
    (convert("--softmax-layers", "-1"), "--softmax-layers takes layer indices >= 0"),
    (convert("--softmax-layers", "0,x"), "--softmax-layers takes comma-separated layer indices"),
    (convert("--softmax-layers", "auto:0"), "auto:N takes a number of layers N >= 1"),
    (convert("--softmax-layers", "auto:1", "--softmax-select", "mse"),
     "argument --softmax-select: invalid choice: 'mse' (choose from"),
    (linearize("--softmax-layers", "auto:1", "--softmax-select", "KL"), "argument --softmax-select: invalid choice"),
    (convert("--softmax-layers", "0,3"), "softmax_layers [3] out of range: the model has 3 layers"),
    (linearize("--softmax-every", "4"), "softmax_every 4 is more than the model's 3 layers"),
    (convert("--softmax-every", "-2"), "--softmax-every must be a whole number >= 0 (0 = off), got -2"),
    (convert("--num-slots", "0"), "--num-slots must be a whole number >= 1, got 0"),
    (convert("--mixer", "mamba"), "argument --mixer: invalid choice: 'mamba'"),
    # training flags
    (linearize("--lr", "nan"), "--lr must be a finite number > 0, got nan"),
    (linearize("--lr", "inf"), "--lr must be a finite number > 0, got inf"),
    (linearize("--lr", "0"), "--lr must be a finite number > 0, got 0.0"),
    (linearize("--lr", "-0.001"), "--lr must be a finite number > 0, got -0.001"),
    (linearize("--transfer-lr", "0"), "--transfer-lr must be a finite number > 0, got 0.0"),
    (linearize("--lora-r", "0"), "--lora-r must be a whole number >= 1, got 0"),
    (linearize("--align-fraction", "1"), "--align-fraction must be a finite number in (0, 1), got 1.0"),
    (linearize("--kl-weight", "-1"), "--kl-weight must be a finite number >= 0, got -1.0"),
    (linearize("--recipe", "distill", "--kl-weight", "0"), "kl_weight (--kl-weight) and ce_weight (--ce-weight) are both 0"),
    (linearize("--align-metric", "l1"), "argument --align-metric: invalid choice: 'l1'"),
    (linearize("--distill", "kl", "--distill-weight", "-5"), "--distill-weight must be a finite number >= 0, got -5.0"),
    (linearize("--distill", "kl", "--distill-weight", "nan"), "--distill-weight must be a finite number >= 0, got nan"),
    (linearize("--distill-weight", "2"), "--distill-weight 2 weighs the KL term of --distill kl, which is off"),
    (linearize("--warmup-steps", "-1"), "--warmup-steps must be a whole number >= 0, got -1"),
    (linearize("--checkpoint-every", "-1"), "--checkpoint-every must be a whole number >= 0"),
    (linearize("--seq-len", "8"), "--seq-len must be a whole number >= 16, got 8"),
    (linearize("--batch-size", "0"), "--batch-size must be a whole number >= 1, got 0"),
    (linearize("--grad-accum", "0"), "--grad-accum must be a whole number >= 1, got 0"),
    (linearize("--max-tokens", "0"), "--max-tokens must be a whole number >= 1, got 0"),
    (linearize("--max-steps", "-3"), "--max-steps must be a whole number >= 1, got -3"),
    (linearize("--max-minutes", "nan"), "--max-minutes must be a finite number >= 0 (0 = no time budget), got nan"),
    (linearize("--max-minutes", "-1"), "--max-minutes must be a finite number >= 0"),
    (linearize("--eval-blocks", "0"), "--eval-blocks must be a whole number >= 1, got 0"),
    (linearize("--transfer-tokens", "0"), "--transfer-tokens must be a whole number >= 1, got 0"),
    (linearize("--seed", "-1"), "--seed must be a whole number in [0, 4294967295], got -1"),
    (linearize("--sequence-parallel", "0"), "--sequence-parallel must be a whole number >= 1, got 0"),
    (linearize("--dist-timeout", "0"), "--dist-timeout must be a finite number > 0, got 0.0"),
    (linearize("--dist-timeout", "inf"), "--dist-timeout must be a finite number > 0, got inf"),
    (linearize("--batch-size", "1.5"), "argument --batch-size: invalid int value: '1.5'"),
    (linearize("--report-to", "nonsense"), "argument --report-to: invalid choice: 'nonsense' (choose from "
                                           "tensorboard, wandb, trackio, none"),
    (linearize("--no-such-flag"), "unrecognized arguments: --no-such-flag"),
    (linearize("--batch-size", "1000000"), "--batch-size 1,000,000 x --seq-len 512 needs about"),
    (linearize("--data", "{root}/fields.jsonl"), "fields found: body, id; pass text_field=NAME to liger.data"),
    # generate
    (["generate", "--model", "{root}/student", "--prompt", "", "--raw"], "--prompt is empty"),
    (generate("--top-p", "5"), "--top-p must be a finite number in (0, 1], got 5.0"),
    (generate("--top-p", "0"), "--top-p must be a finite number in (0, 1], got 0.0"),
    (generate("--temperature", "-1"), "--temperature must be a finite number >= 0 (0 = greedy), got -1.0"),
    (generate("--temperature", "nan"), "--temperature must be a finite number >= 0 (0 = greedy), got nan"),
    (generate("--max-new-tokens", "0"), "--max-new-tokens must be a whole number >= 1, got 0"),
    (generate("--seed", "-3"), "--seed must be a whole number in [0, 4294967295], got -3"),
    (generate("--max-new-tokens", str(10**13), "--any-model", model="teacher"),
     "generating --max-new-tokens 10,000,000,000,000 with"),
    (generate(model="nan"), "hold NaN or infinite values (first in model.embed_tokens.weight)"),
    (generate(model="null"), "the \"liger\" entry must be a JSON object of liger settings (as `liger convert` "
                             "writes it), got NoneType None"),
    (generate(model="string"), "the \"liger\" entry must be a JSON object of liger settings (as `liger convert` "
                               "writes it), got str 'gla'"),
    (generate(model="huge_window"), "window 1000000000000 is longer than the model's context limit of 1024"),
    (generate(model="bad_value"), "window must be a whole number of tokens >= 0"),
    (["info", "{root}/null"], "config.json: the \"liger\" entry must be a JSON object"),
    # eval
    (evaluate(model="nan"), "hold NaN or infinite values"),
    (evaluate(model="null"), "got NoneType None"),
    (evaluate("--depths", "0,nan"), "--depths must be numbers between 0 and 1, got [0.0, nan]"),
    (evaluate("--batch-size", "0"), "--batch-size must be a whole number >= 1, got 0"),
    (evaluate("--seq-len", "0"), "--seq-len must be a whole number >= 1, got 0"),
    (evaluate("--blocks", "-1"), "--blocks must be a whole number >= 1, got -1"),
    (evaluate("--items", "0"), "--items must be a whole number >= 1, got 0"),
    (evaluate("--passkey-samples", "0"), "--passkey-samples must be a whole number >= 1, got 0"),
    (evaluate("--decode-tokens", "-1"), "--decode-tokens must be a whole number >= 0, got -1"),
    (evaluate("--lm-eval-limit", "0"), "--lm-eval-limit must be a whole number >= 1, got 0"),
    (evaluate("--seed", "-1"), "--seed must be a whole number in [0, 4294967295]"),
    (evaluate("--recall-lengths", "0"), "--recall-lengths must be positive token counts, got [0]"),
    (evaluate("--lengths", "64,x"), "--lengths takes comma-separated whole numbers"),
    (evaluate("--batch-sizes", "0"), "--batch-sizes must be >= 1, got [0]"),
    (evaluate("--mqar-pairs", "0"), "--mqar-pairs must be between 1 and"),
    (evaluate("--sections", "lm", "--batch-size", "100000000"), "needs about"),
    # bench
    (bench("ops", "--heads", "0"), "--heads must be a whole number >= 1, got 0"),
    (bench("ops", "--lengths", "0"), "--lengths needs at least one value, all >= 1"),
    (bench("model", "--decode-tokens", "0"), "--decode-tokens must be a whole number >= 1, got 0"),
    (bench("model", "--max-prefill-tokens", "-1"), "--max-prefill-tokens must be a whole number >= 0, got -1"),
    (bench("train", "--lora-r", "0"), "--lora-r must be a whole number >= 1, got 0"),
    (bench("train", "--precisions", "fp8"), "--precisions takes bf16 and/or fp32"),
    (bench("profile", "--steps", "0"), "--steps must be a whole number >= 1, got 0"),
]


def _row_id(argv: list[str]) -> str:
    return " ".join([argv[0], *argv[-2:]]).replace("{root}/", "").replace("{tmp}/", "")


@pytest.mark.parametrize("argv,match", ROWS, ids=[_row_id(a) for a, _ in ROWS])
def test_bad_input_is_one_line_and_exit_code_2(argv, match, root, tmp_path, capsys):
    argv = [a.replace("{root}", str(root)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("liger") and ": error: " in lines[0], err
    assert match in lines[0], err
    assert not (tmp_path / "out").exists()


def test_every_numeric_flag_has_bounds():
    """Each int or float flag of every command declares its range (`liger.cli.flags.number`)."""
    missing = []

    def visit(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    visit(sub, f"{prefix} {name}")
            elif action.type in (int, float) and not isinstance(getattr(action, "bounds", None), Bounds):
                missing.append(f"{prefix} {action.option_strings[-1]}")

    visit(build_parser(), "liger")
    assert not missing, missing


def test_bounds_reject_nan_and_inf():
    b = Bounds(0, open_low=True)
    for bad in (math.nan, math.inf, -math.inf, 0.0, -1.0):
        with pytest.raises(ConfigError, match="--x must be a finite number > 0"):
            b.check("--x", bad, float)
    b.check("--x", 1e-9, float)
    b.check("--x", None, float)  # not given


def test_recipes_take_lr_zero_as_an_error_not_the_default():
    from liger.arch import ARCHITECTURES
    from liger.train.recipes import LORA_LR, RecipeOptions, build_stages

    spec = ARCHITECTURES["llama"]
    assert build_stages("liger", spec, None, RecipeOptions())[0].lr == LORA_LR
    assert build_stages("liger", spec, None, RecipeOptions(lr=5e-4))[0].lr == 5e-4
    for kw, match in [(dict(lr=0.0), "lr must be"), (dict(lr=math.nan), "lr must be"),
                      (dict(transfer_lr=0.0), "transfer_lr must be"), (dict(lora_r=0), "lora_r")]:
        with pytest.raises(ConfigError, match=match):
            build_stages("lolcats", spec, None, RecipeOptions(**kw))
    with pytest.raises(ConfigError, match="distill_weight must be a finite number >= 0"):
        build_stages("liger", spec, None, RecipeOptions(distill_weight=-5.0))


def test_liger_config_from_dict_names_the_file():
    for bad, match in [(None, "got NoneType None"), ("gla", "got str 'gla'"), ([1], "got list")]:
        with pytest.raises(ConfigError, match=f"^/x/config.json: the \"liger\" entry must be a JSON object.*{match}"):
            LigerConfig.from_dict(bad, "/x/config.json")
    with pytest.raises(ConfigError, match=r"^/x/config.json: unknown liger config keys \['colour'\]"):
        LigerConfig.from_dict({"colour": 1}, "/x/config.json")
    with pytest.raises(ConfigError, match="^/x/config.json: window must be"):
        LigerConfig.from_dict({"window": -1}, "/x/config.json")
    LigerConfig(window=LIMIT).check_window(LIMIT)
    with pytest.raises(ConfigError, match="--window 1025 is longer than the model's context limit of 1024"):
        LigerConfig(window=LIMIT + 1).check_window(LIMIT, "--window")


# ------------------------------------------------------------------------------------------- memory estimate


def _bundled_shape() -> me.ModelShape:
    from transformers import AutoConfig

    from liger.teacher import teacher_path

    return me.ModelShape(AutoConfig.from_pretrained(teacher_path()))


def test_model_shape_counts_parameters_from_the_config_alone():
    shape = _bundled_shape()
    assert shape.params == 134_515_008  # as `liger info` counts the loaded model
    assert shape.kv_bytes_per_token == 2 * 3 * 64 * 4 and shape.softmax_layers == shape.layers == 30
    tiny = tiny_model("llama", vocab_size=1000)
    assert me.ModelShape(tiny.config).params == sum(p.numel() for p in tiny.parameters())


def test_readme_defaults_fit_a_24_gb_machine():
    shape = _bundled_shape()
    train = sum(me.training_bytes(shape, 1 * 512).values())  # linearize's defaults: batch 1 x 512 tokens
    assert 1e9 < train < 4e9
    assert sum(me.training_bytes(shape, 4 * 1024, distill=True).values()) < 20e9
    opts = check_options(EvalOptions(model="m"), 8192)  # eval's full defaults on the bundled teacher
    assert sum(memory_parts(opts, shape).values()) < 16e9


def test_a_run_that_cannot_fit_is_refused_with_the_figures(monkeypatch, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemAvailable:   20971520 kB\n")  # 20 GiB available
    monkeypatch.setattr(me, "MEMINFO", meminfo)
    shape = _bundled_shape()
    me.check_fits(me.training_bytes(shape, 512), "training", "lower --batch-size")
    with pytest.raises(ConfigError, match=r"^training needs about [\d,.]+ GB of memory \(estimate: weights 1.1 GB \+ "
                       r"activations .* \+ logits .*\), more than the 21.5 GB available \(MemAvailable\); lower"):
        me.check_fits(me.training_bytes(shape, 64 * 512), "training", "lower --batch-size")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert me.available_bytes()[0] == 20971520 * 1024 / 4
