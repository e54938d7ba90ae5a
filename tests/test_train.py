"""The training loop: exact resume after a kill, budgets, schedule, data order, checkpoint safety."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file

import liger
from liger.errors import CheckpointError, ConfigError
from liger.train.loop import CHECKPOINT_FILES, DataOrder, Trainer, TrainConfig, lr_factor, resolve_precision
from liger.train.losses import next_token_loss
from liger.train.recipes import add_lora, trainable_parameters

SCRIPT = Path(__file__).with_name("train_script.py")


def run_script(work, out, kill_at=0, resume=False):
    return subprocess.run([sys.executable, str(SCRIPT), str(work), str(out), str(kill_at), "1" if resume else "0"],
                          cwd=SCRIPT.parent, capture_output=True, text=True)


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    r = run_script(tmp_path / "a", tmp_path / "a.safetensors")
    assert r.returncode == 0, r.stderr
    r = run_script(tmp_path / "b", tmp_path / "b.safetensors", kill_at=3)
    assert r.returncode == 137 and not (tmp_path / "b.safetensors").exists()
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and not state["done"]
    r = run_script(tmp_path / "b", tmp_path / "b.safetensors", resume=True)
    assert r.returncode == 0, r.stderr
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))  # no duplicated steps after the resume
    assert not [p for p in (tmp_path / "b").iterdir() if ".tmp-" in p.name]


def _trainer(tmp_path, **kw):
    model = add_lora(liger.linearize(tiny_model("llama")), ["q_proj", "v_proj"])
    blocks = torch.randint(0, 128, (5, 16))
    cfg = TrainConfig(**{"precision": "fp32", "warmup_steps": 1, **kw})
    return Trainer(model, trainable_parameters(model), blocks, next_token_loss, cfg, tmp_path, "lora", {"x": 1},
                   show_progress=False)


def test_checkpoint_is_safetensors_and_json_and_restores_the_exact_state(tmp_path):
    t = _trainer(tmp_path, max_steps=2)
    t.run()
    rng, py_rng = torch.get_rng_state(), random.getstate()
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == sorted(CHECKPOINT_FILES)
    torch.rand(3), random.random()
    t2 = _trainer(tmp_path, max_steps=2)
    assert t2.load_checkpoint() and t2.step == 2
    assert torch.equal(torch.get_rng_state(), rng) and random.getstate() == py_rng
    a, b = t.opt.state_dict(), t2.opt.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for k in a["state"][i])


def test_resume_drops_the_log_records_written_after_the_checkpoint(tmp_path):
    _trainer(tmp_path, max_steps=3).run()
    log = tmp_path / "train_log.jsonl"
    with log.open("a") as f:
        f.write(json.dumps({"stage": "next_stage", "step": 1, "loss": 1.0}) + "\n")  # trained again on resume
        f.write('{"stage": "next_stage", "st')  # cut off by a kill
    assert _trainer(tmp_path, max_steps=3).load_checkpoint()
    assert [(r["stage"], r["step"]) for r in map(json.loads, log.read_text().splitlines())] == [
        ("lora", 1), ("lora", 2), ("lora", 3)]


def test_token_budget_sets_the_step_count(tmp_path):
    t = _trainer(tmp_path, max_tokens=100, batch_size=2)  # 32 tokens per step -> 4 steps
    res = t.run()
    assert res.steps == 4 and res.tokens == 128 and res.stopped_by == "budget"
    assert res.final_loss is not None and res.final_loss > 0


def test_time_budget_stops_early(tmp_path):
    res = _trainer(tmp_path, max_steps=50, max_minutes=1e-9).run()
    assert res.steps == 1 and res.stopped_by == "time"


def test_resume_with_other_settings_is_refused(tmp_path):
    _trainer(tmp_path, max_steps=2).run()
    t = _trainer(tmp_path, max_steps=2)
    t.fingerprint = {"x": 2}
    with pytest.raises(CheckpointError, match="different settings"):
        t.load_checkpoint()


def test_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    f = [lr_factor(cfg, s, total=14) for s in range(15)]
    assert [round(x, 3) for x in f[:4]] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0) and f[14] == pytest.approx(0.1) and 0.1 < f[9] < 1.0


def test_schedule_follows_the_time_budget_when_it_binds_first():
    cfg = TrainConfig(warmup_steps=0, max_steps=1000, max_minutes=10)
    assert lr_factor(cfg, 10, 1000, elapsed=300) == pytest.approx(0.55)  # half the time: mid-cosine
    assert lr_factor(cfg, 10, 1000, elapsed=600) == pytest.approx(0.1)


def test_data_order_is_seeded_and_covers_every_block_each_epoch():
    blocks = torch.arange(10)[:, None].repeat(1, 3)
    a, b = DataOrder(blocks, seed=1), DataOrder(blocks, seed=1)
    first = torch.cat([a.next(5) for _ in range(2)])[:, 0]
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(first, torch.cat([b.next(5) for _ in range(2)])[:, 0])
    assert not torch.equal(a.next(10)[:, 0], first)  # a new permutation next epoch
    assert not torch.equal(DataOrder(blocks, seed=2).next(10)[:, 0], first)


@pytest.mark.parametrize("kw,match", [(dict(), "give a budget"), (dict(max_steps=0), "max-steps must be > 0"),
                                      (dict(max_steps=1, precision="fp16"), "precision")])
def test_bad_train_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw).total_steps(16)


@pytest.mark.parametrize("cpuinfo,expect", [
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", "fp32"),  # AVX-512 without bf16 units
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n", "bf16"),
    ("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n", "bf16"),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", "bf16"),  # Arm
    (None, "fp32"),  # unreadable: no bf16 assumed
])
def test_auto_precision_picks_bf16_only_where_the_cpu_has_bf16_units(tmp_path, cpuinfo, expect):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert resolve_precision("auto", "cpu", path) == expect
    for fixed in ("bf16", "fp32"):  # an explicit choice is kept
        assert resolve_precision(fixed, "cpu", path) == fixed


def test_trainer_resolves_auto_precision(tmp_path):
    model = tiny_model(layers=1)
    params = {n: p for n, p in model.named_parameters()}
    blocks = torch.randint(0, 128, (4, 8))
    trainer = Trainer(model, params, blocks, next_token_loss, TrainConfig(precision="auto", max_steps=1), tmp_path,
                      "s", {})
    assert trainer.cfg.precision == resolve_precision("auto", "cpu")
