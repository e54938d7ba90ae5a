"""The work folder of `liger linearize` is safe to resume from and leaves nothing behind: checkpoints hold
safetensors and JSON only (a planted pickle never runs), every damaged file is one clear error line, a run
that fails at start-up leaves no folder, and what a kill left beside the output is removed by the next run."""

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_linearize import args, setup  # noqa: F401 (setup: the module's tiny model and data)

import liger
from liger.atomic import atomic_output_dir, remove_stale_siblings
from liger.cli import main


class Payload:
    """Unpickling it creates the file `marker`: the proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path, marker):
    """Write a torch.save file (a pickle) at `path` whose loading creates `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"optimizer": Payload(marker), "torch_rng": torch.get_rng_state()}, path)


@pytest.fixture(scope="module")
def stopped(setup, tmp_path_factory):  # noqa: F811
    """A work folder as a kill during the final save leaves it: every stage trained and checkpointed
    (stage files, metrics, log), the output not written."""
    root = tmp_path_factory.mktemp("stopped")

    def killed(*a, **kw):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("liger.train.job._save", killed)
        assert main(args(setup, root / "out", "--max-minutes", "0")) == 130
    names = {p.relative_to(root / "out.work").as_posix() for p in (root / "out.work").rglob("*")}
    assert {"metrics.json", "train_log.jsonl", "stage-lora.json", "stage-lora.safetensors",
            "checkpoint/state.json", "checkpoint/trainable.safetensors", "checkpoint/optimizer.safetensors",
            "checkpoint/optimizer.json"} <= names
    assert not (root / "out").exists()
    return root / "out.work"


def work_copy(stopped, tmp_path):
    shutil.copytree(stopped, tmp_path / "out.work")
    return tmp_path / "out", tmp_path / "out.work"


def one_error_line(capsys) -> str:
    """The error line the CLI printed (transformers' own progress bars aside); no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("liger linearize: error: ") and "Traceback" not in err, err
    return lines[0]


def test_the_package_never_unpickles():
    src = Path(liger.__file__).parent
    for path in src.rglob("*.py"):
        text = path.read_text()
        for word in ("torch.load", "pickle", "weights_only=False"):
            assert word not in text, f"{path} mentions {word}"


def test_the_planted_payload_is_live(tmp_path):
    plant(tmp_path / "bait.pt", tmp_path / "marker")
    torch.load(tmp_path / "bait.pt", weights_only=False)
    assert (tmp_path / "marker").exists()  # so its absence below means nothing was unpickled


def test_an_old_format_work_folder_is_refused_unread(setup, stopped, tmp_path, capsys):  # noqa: F811
    out, work = work_copy(stopped, tmp_path)
    for name in ("optimizer.safetensors", "optimizer.json"):
        (work / "checkpoint" / name).unlink()
    plant(work / "checkpoint" / "optimizer.pt", tmp_path / "marker")
    assert main(args(setup, out, "--resume")) == 2
    err = one_error_line(capsys)
    assert "written by an older liger" in err and "without --resume" in err and "optimizer.pt" in err
    assert not (tmp_path / "marker").exists() and (work / "checkpoint" / "optimizer.pt").exists()


def test_pickles_under_other_names_are_never_read(setup, stopped, tmp_path):  # noqa: F811
    out, work = work_copy(stopped, tmp_path)
    for name in ("checkpoint/optimizer.pt", "checkpoint/rng.pt", "checkpoint/trainable.pt", "optimizer.pt",
                 "stage-lora.pt", "metrics.pt", "training_state.bin"):
        plant(work / name, tmp_path / "marker")
    assert main(args(setup, out, "--resume")) == 0
    assert not (tmp_path / "marker").exists()
    assert (out / "model.safetensors").is_file() and not work.exists()


def _corrupt(path: Path, how: str, marker: Path) -> None:
    data = path.read_bytes()
    if how == "pickle":
        plant(path, marker)
        return
    path.write_bytes({"zero-byte": b"", "truncated": data[: len(data) // 2],
                      "random": b"\x80" + random.Random(0).randbytes(400)}[how])


@pytest.mark.parametrize("how", ["zero-byte", "truncated", "random", "pickle"])
@pytest.mark.parametrize("name", ["checkpoint/trainable.safetensors", "checkpoint/optimizer.safetensors",
                                  "checkpoint/optimizer.json", "checkpoint/state.json", "metrics.json",
                                  "stage-lora.safetensors", "stage-lora.json", "train_log.jsonl"])
def test_a_damaged_work_folder_file_is_one_clear_line(setup, stopped, tmp_path, capsys, name, how):  # noqa: F811
    out, work = work_copy(stopped, tmp_path)
    _corrupt(work / name, how, tmp_path / "marker")
    t0 = time.time()
    assert main(args(setup, out, "--resume")) == 2
    err = one_error_line(capsys)
    assert str(work / name) in err and "without --resume" in err, err
    assert time.time() - t0 < 5  # found before any model loads
    assert not (tmp_path / "marker").exists() and work.is_dir() and not out.exists()


@pytest.mark.parametrize("extra,match", [(["--lr", "0.5"], "different settings"),
                                         (["--recipe", "lolcats", "--mixer", "lolcats"], "different settings")])
def test_resuming_with_other_flags_is_one_line(setup, stopped, tmp_path, capsys, extra, match):  # noqa: F811
    out, work = work_copy(stopped, tmp_path)
    assert main(args(setup, out, "--resume", *extra)) == 2
    assert match in one_error_line(capsys) and work.is_dir()


def test_a_log_line_cut_off_by_a_kill_is_dropped(setup, stopped, tmp_path):  # noqa: F811
    out, work = work_copy(stopped, tmp_path)
    with (work / "train_log.jsonl").open("a") as f:
        f.write('{"stage": "lora", "st')
    assert main(args(setup, out, "--resume")) == 0
    assert (out / "train_log.jsonl").read_text().count("\n") == 6


def test_a_kill_during_the_final_save_leaves_nothing_after_the_resume(setup, stopped, tmp_path):  # noqa: F811
    out, work = work_copy(stopped, tmp_path)
    for name in (".out.tmp-0badc0de", ".out.old-1f2e3d4c", "out.work/.checkpoint.tmp-12345678"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x" * 1000)  # what the killed save had written
    assert main(args(setup, out, "--resume")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert liger.from_pretrained(out) is not None


@pytest.mark.parametrize("extra,match", [
    (["--data", "/nonexistent/corpus.txt"], "corpus.txt"),
    (["--sequence-parallel", "2", "--recipe", "lolcats", "--mixer", "lolcats"], "--sequence-parallel"),
    (["--fsdp"], "--fsdp"),
    (["--recipe", "lolcats"], "attention transfer"),  # found once the model is linearized
])
def test_a_run_failing_at_start_up_leaves_no_folder(setup, tmp_path, capsys, extra, match):  # noqa: F811
    assert main(args(setup, tmp_path / "out", *extra)) == 2
    assert match in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_unsupported_model_leaves_no_folder(setup, tmp_path, capsys):  # noqa: F811
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    shutil.copy(setup / "model" / "tokenizer.json", tmp_path / "gpt2")
    shutil.copy(setup / "model" / "tokenizer_config.json", tmp_path / "gpt2")
    a = args(setup, tmp_path / "out")
    a[a.index("--model") + 1] = str(tmp_path / "gpt2")
    assert main(a) == 2
    assert "not supported" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


def test_a_failed_fresh_start_keeps_the_old_work_folder(setup, stopped, tmp_path):  # noqa: F811
    out, work = work_copy(stopped, tmp_path)
    assert main(args(setup, out, "--data", "/nonexistent/corpus.txt")) == 2
    assert sorted(p.name for p in work.iterdir()) == sorted(p.name for p in stopped.iterdir())
    assert main(args(setup, out, "--resume")) == 0  # still resumable


@pytest.mark.parametrize("out", ["/proc/x", "/proc/x/y", "file"])
def test_an_unwritable_out_fails_at_once(setup, tmp_path, capsys, out):  # noqa: F811
    (tmp_path / "file").write_text("not a folder")
    t0 = time.time()
    assert main(args(setup, tmp_path / out if out == "file" else out)) == 2
    assert time.time() - t0 < 1
    assert "--out" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_out_holding_another_model_is_refused_before_any_work(setup, tmp_path, capsys):  # noqa: F811
    shutil.copytree(setup / "model", tmp_path / "out")
    t0 = time.time()
    assert main(args(setup, tmp_path / "out")) == 2
    assert "not a liger checkpoint" in one_error_line(capsys) and time.time() - t0 < 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_siblings_of_live_writers_are_kept(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {f".t.tmp-{live.pid}-aaaa": True, f".t.old-{live.pid}-bbbb": True, f".t.tmp-{dead.pid}-cccc": False,
                 f".t.tmp-{os.getpid()}-dddd": False, ".t.tmp-0badc0de": False, ".t.old-0badc0de": False,
                 ".tt.tmp-0badc0de": True, ".t.tmp-file": True}
        for name in names:
            (tmp_path / name).mkdir() if name != ".t.tmp-file" else (tmp_path / name).write_text("a file")
        remove_stale_siblings(tmp_path / "t")
        assert {n for n, keep in names.items() if keep} == {p.name for p in tmp_path.iterdir()}
        with atomic_output_dir(tmp_path / "t") as tmp:  # every writer cleans up first
            (tmp / "x").write_text("x")
        assert f".t.tmp-{live.pid}-aaaa" in {p.name for p in tmp_path.iterdir()}
    finally:
        live.kill()
        live.wait()
