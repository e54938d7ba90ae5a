"""`liger linearize --report-to`: the trackers get train_log.jsonl's scalars (liger.train.tracking)."""

import json
import sys
import types

import pytest
from test_linearize import args, setup  # noqa: F401 (setup: the tiny model and data, a fixture)

from liger.cli import main
from liger.train import job
from liger.train.tracking import Tracking, parse_report_to, record_scalars


def _scalars(run_dir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for tag, events in scalars.items():  # one value per step (a resumed run's purge_step hides the repeats)
        assert len({step for step, _ in events}) == len(events), (tag, events)
    return {tag: dict(events) for tag, events in scalars.items()}


def _hparams(run_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}


def test_tensorboard_gets_the_training_log_across_stages(setup, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    assert main(args(setup, out, "--recipe", "staged", "--report-to", "tensorboard")) == 0
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in records]
    assert stages[0] == "align" and stages[-1] == "distill" and len(records) == 6
    scalars = _scalars(out / "tracking" / "out")  # <out>/tracking/<run name>
    global_step = 0
    for r in records:
        global_step += 1  # one step per record, counted on over the stages
        expected = record_scalars(r)
        assert {"align/loss", "distill/loss"} & set(expected) and f"{r['stage']}/lr" in expected
        for tag, value in expected.items():
            assert scalars[tag][global_step] == pytest.approx(value, rel=1e-6), tag
    n_align = stages.count("align")
    assert set(scalars["align/loss"]) == set(range(1, n_align + 1))
    assert set(scalars["distill/loss"]) == set(range(n_align + 1, 7))  # counted on from the align stage's steps
    report = json.loads((out / "report.json").read_text())
    assert scalars["report/student_ppl"] == {6: pytest.approx(report["student_ppl"], rel=1e-6)}
    hparams = _hparams(out / "tracking" / "out" / "hparams")
    assert hparams["recipe"] == "staged" and hparams["train.max_steps"] == 6
    assert (out / "loss.png").is_file() and not (tmp_path / "out.work").exists()


def test_a_missing_tracker_package_is_one_clear_error_before_any_model_loads(setup, tmp_path, monkeypatch,  # noqa: F811
                                                                             capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(job, "_load_models", no_loading)
    assert main(args(setup, tmp_path / "out", "--report-to", "tensorboard")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the tensorboard package" in err[0] and "pip install tensorboard" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


def test_report_to_parsing():
    assert parse_report_to("none") == ()
    assert parse_report_to("tensorboard, wandb,tensorboard") == ("tensorboard", "wandb")
    for bad in ("nonsense", "none,wandb", ","):
        with pytest.raises(ValueError):
            parse_report_to(bad)


def test_report_to_does_not_block_a_resume():
    assert job.JobOptions(report_to=("tensorboard",)).fingerprint() == job.JobOptions().fingerprint()


def _fake_wandb(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    run = types.SimpleNamespace(log=lambda values, step=None, **k: calls.append({"log": values, "step": step}),
                                finish=lambda: calls.append({"finish": True}))

    def init(**kwargs):
        calls.append({"init": kwargs})
        return run

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return calls


@pytest.mark.parametrize("env_mode", [None, "online"])
def test_wandb_runs_offline_unless_wandb_mode_is_set(tmp_path, monkeypatch, env_mode):
    calls = _fake_wandb(monkeypatch)
    if env_mode:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    t = Tracking(["wandb"], tmp_path, "run", {"train.lr": 1e-3})
    t.log_record({"stage": "lora", "step": 2, "loss": 3.5, "lr": 1e-3, "epoch": 0.5}, offset=10)
    t.finish()
    init = calls[0]["init"]
    assert init["project"] == "run" and init["dir"] == str(tmp_path / "tracking")
    assert init["config"] == {"train.lr": 1e-3} and init.get("mode") == (None if env_mode else "offline")
    assert calls[1] == {"log": {"lora/loss": 3.5, "lora/lr": 1e-3, "lora/epoch": 0.5}, "step": 12}
    assert calls[2] == {"finish": True}


class _Killed(RuntimeError):
    pass


def test_a_resumed_run_replaces_the_steps_it_trains_again(setup, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    run = args(setup, out, "--recipe", "staged", "--report-to", "tensorboard", "--checkpoint-every", "2")

    class Killing(job.Trainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.on_step = self._kill

        def _kill(self, step):
            if self.stage == "distill" and step == 3:  # logged, then trained again from step 2's checkpoint
                raise _Killed

    monkeypatch.setattr(job, "Trainer", Killing)
    with pytest.raises(_Killed):
        main(run)
    assert (tmp_path / "out.work" / "tracking" / "out").is_dir()
    monkeypatch.undo()
    assert main([*run, "--resume"]) == 0
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    scalars = _scalars(out / "tracking" / "out")
    n_align = sum(r["stage"] == "align" for r in records)
    assert scalars["distill/loss"] == {n_align + r["step"]: pytest.approx(r["loss"], rel=1e-6)
                                       for r in records if r["stage"] == "distill"}
