"""Multi-process training and LASP-2 sequence parallelism, with 2 (or 3) processes over gloo on the CPU.

Each test starts its processes with `_launch` (spawned, one thread each, a free port, a hard deadline), and
the workers compare against the single-process computation themselves; a worker's failure comes back as
its traceback."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

TOL = 1e-4  # max abs difference, float32


# ---- process launcher ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank: int, world: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", LIGER_DIST_BACKEND="gloo")
    torch.set_num_threads(1)
    try:
        fn(rank, world, Path(out), *args)
    except BaseException:
        Path(out, f"error-{rank}.txt").write_text(traceback.format_exc())
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _launch(fn, world: int, tmp_path: Path, *args, timeout: float = 120.0) -> list[int]:
    """Run fn(rank, world, tmp_path, *args) in `world` spawned processes; return their exit codes. Fails the
    test with a worker's traceback if it raised, or if the group is still running after `timeout` s."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, str(tmp_path), args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    errors = sorted(tmp_path.glob("error-*.txt"))
    if errors:
        pytest.fail("\n".join(f"{e.name}:\n{e.read_text()}" for e in errors))
    assert not alive, f"{len(alive)} worker(s) still running after {timeout} s"
    return [p.exitcode for p in procs]


def _init() -> None:
    from liger.distributed.runtime import init_distributed

    init_distributed(timeout_s=60)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    d = _maxdiff(a, b)
    assert d <= TOL, f"{what}: max abs difference {d:.2e}"


# ---- sequence-parallel ops ------------------------------------------------------------------------------
def _ops_worker(rank: int, world: int, out: Path, cases: list) -> None:
    from liger.distributed.sequence import split_lengths, split_sequence
    from liger.ops import chunk_gla, window_attention
    from liger.distributed.lasp import chunk_gla_sp, window_halo

    _init()
    for T, W in cases:
        gen = torch.Generator().manual_seed(T * 100 + W)
        B, Hq, Hk, D = 2, 4, 2, 8
        q = torch.randn(B, T, Hq, D, generator=gen)
        k = torch.randn(B, T, Hk, D, generator=gen)
        v = torch.randn(B, T, Hk, D, generator=gen)
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, Hk, D, generator=gen) * 3)
        g[0, T // 2, 0, :3] = -40.0  # below chunk_gla's gate floor
        s0 = torch.randn(B, Hk, D, D, generator=gen)
        valid = torch.ones(B, T, dtype=torch.bool)
        valid[1, : T // 4] = False  # left padding crosses ranks
        do = torch.randn(B, T, Hq, D, generator=gen)
        dS = torch.randn(B, Hk, D, D, generator=gen)

        # single process
        full = [x.clone().requires_grad_() for x in (q, k, v, g, s0)]
        o_ref, S_ref = chunk_gla(*full[:4], initial_state=full[4], output_final_state=True)
        w_ref = window_attention(full[0], full[1], full[2], W, key_valid=valid)
        ((o_ref + w_ref) * do).sum().add_((S_ref * dS).sum()).backward()

        # this rank's slice
        lengths = split_lengths(T, world)
        part = [split_sequence(x, lengths, rank).clone().requires_grad_() for x in (q, k, v, g)]
        s0_local = s0.clone().requires_grad_()
        o, S = chunk_gla_sp(*part, initial_state=s0_local, output_final_state=True)
        past = window_halo(part[1], part[2], split_sequence(valid, lengths, rank), W, lengths)
        w = window_attention(part[0], part[1], part[2], W, key_valid=split_sequence(valid, lengths, rank),
                             past=past)
        ((o + w) * split_sequence(do, lengths, rank)).sum().add_((S * dS).sum() / world).backward()

        tag = f"T={T} W={W} lengths={lengths} rank {rank}"
        _close(o, split_sequence(o_ref, lengths, rank), f"gla output {tag}")
        _close(w, split_sequence(w_ref, lengths, rank), f"window output {tag}")
        _close(S, S_ref, f"final state {tag}")
        for name, a, ref in zip("qkvg", part, full):
            _close(a.grad, split_sequence(ref.grad, lengths, rank), f"d{name} {tag}")
        dist.all_reduce(s0_local.grad)  # each rank holds its share of d(initial state)
        _close(s0_local.grad, full[4].grad, f"d initial state {tag}")


@pytest.mark.parametrize("world,cases", [
    (2, [(37, 8), (32, 64), (9, 8)]),  # uneven; window longer than a slice; a halo from a short slice
    (3, [(10, 8), (40, 16)]),  # rank 2's halo spans ranks 0 and 1
])
def test_sequence_parallel_ops_equal_single_process(tmp_path, world, cases):
    _launch(_ops_worker, world, tmp_path, cases)


def _more_ops_worker(rank: int, world: int, out: Path, lengths_T: list) -> None:
    """GSA's value-gated slot pass, the whole of GSA, the gated delta rule and the token halo under LASP-2,
    with an initial state and the final state, against one process (outputs, states and all gradients)."""
    from liger.distributed.sequence import split_lengths, split_sequence
    from liger.ops import chunk_gated_delta_rule, chunk_gsa, l2norm
    from liger.distributed.collectives import preceding_tokens
    from liger.distributed.lasp import chunk_gated_delta_rule_sp, chunk_gsa_sp, chunk_value_gated_gla_sp
    from liger.ops import chunk_value_gated_gla

    _init()
    lsig = torch.nn.functional.logsigmoid
    for T in lengths_T:
        gen = torch.Generator().manual_seed(T)
        B, Hq, Hk, D, M = 2, 4, 2, 8, 4
        q = torch.randn(B, T, Hq, D, generator=gen)
        k = torch.randn(B, T, Hk, D, generator=gen)
        v = torch.randn(B, T, Hk, D, generator=gen)
        lengths = split_lengths(T, world)
        cases = {  # name: (single-process op, LASP-2 op, inputs, initial state)
            "value-gated gla": (chunk_value_gated_gla, chunk_value_gated_gla_sp,
                                [q, k, v, lsig(torch.randn(B, T, Hk, D, generator=gen) * 3)],
                                torch.randn(B, Hk, D, D, generator=gen)),
            "gsa": (chunk_gsa, chunk_gsa_sp,
                    [q, k, v, torch.rand(B, T, Hk, M, generator=gen), lsig(torch.randn(B, T, Hk, M, generator=gen))],
                    (torch.randn(B, Hk, D, M, generator=gen), torch.randn(B, Hk, M, D, generator=gen))),
            "gated delta rule": (chunk_gated_delta_rule, chunk_gated_delta_rule_sp,
                                 [l2norm(q), l2norm(k), v, lsig(torch.randn(B, T, Hk, generator=gen)),
                                  2 * torch.rand(B, T, Hk, generator=gen)],  # beta in [0, 2]
                                 torch.randn(B, Hk, D, D, generator=gen)),
        }
        for name, (op, op_sp, inputs, s0) in cases.items():
            tag = f"{name} T={T} lengths={lengths} rank {rank}"
            states = list(s0) if isinstance(s0, tuple) else [s0]
            do = torch.randn(B, T, Hq, D, generator=gen)
            dS = [torch.randn(x.shape, generator=gen) for x in states]

            def loss(o, S, do, share=1.0):
                S = list(S) if isinstance(S, tuple) else [S]
                return (o * do).sum() + sum((a * b).sum() for a, b in zip(S, dS)) * share

            full = [x.clone().requires_grad_() for x in inputs]
            full_s0 = [x.clone().requires_grad_() for x in states]
            init = tuple(full_s0) if isinstance(s0, tuple) else full_s0[0]
            o_ref, S_ref = op(*full, scale=1.0, initial_state=init, output_final_state=True)
            loss(o_ref, S_ref, do).backward()

            part = [split_sequence(x, lengths, rank).clone().requires_grad_() for x in inputs]
            part_s0 = [x.clone().requires_grad_() for x in states]
            init = tuple(part_s0) if isinstance(s0, tuple) else part_s0[0]
            o, S = op_sp(*part, scale=1.0, initial_state=init, output_final_state=True)
            loss(o, S, split_sequence(do, lengths, rank), 1.0 / world).backward()

            _close(o, split_sequence(o_ref, lengths, rank), f"output {tag}")
            for a, ref in zip(S if isinstance(S, tuple) else [S], S_ref if isinstance(S_ref, tuple) else [S_ref]):
                _close(a, ref, f"final state {tag}")
            for i, (a, ref) in enumerate(zip(part, full)):
                _close(a.grad, split_sequence(ref.grad, lengths, rank), f"d input {i} {tag}")
            for a, ref in zip(part_s0, full_s0):
                dist.all_reduce(a.grad)  # each rank holds its share of d(initial state)
                _close(a.grad, ref.grad, f"d initial state {tag}")

        # the n tokens before each slice (zeros before the sequence), and their gradient
        x = torch.randn(B, T, 5, generator=gen)
        xl = split_sequence(x, lengths, rank).clone().requires_grad_()
        n = 3
        halo = preceding_tokens(xl, n, lengths)
        start = sum(lengths[:rank])
        expect = torch.nn.functional.pad(x, (0, 0, n, 0))[:, start : start + n]
        _close(halo, expect, f"preceding tokens T={T} rank {rank}")
        w = torch.randn(B, n, 5, generator=torch.Generator().manual_seed(rank))
        (halo * w).sum().backward()
        dx = torch.zeros(world, B, T + n, 5)  # what each rank's halo adds to d(x), in padded coordinates
        dx[rank, :, start : start + n] = w
        dist.all_reduce(dx)
        _close(xl.grad, split_sequence(dx.sum(0)[:, n:], lengths, rank), f"d preceding tokens T={T} rank {rank}")


@pytest.mark.parametrize("world,lengths_T", [(2, [37, 5]), (3, [40, 4])])  # uneven; slices shorter than the halo
def test_sequence_parallel_gsa_delta_and_halo_ops_equal_single_process(tmp_path, world, lengths_T):
    _launch(_more_ops_worker, world, tmp_path, lengths_T)


# ---- a linearized layer and a whole tiny model ----------------------------------------------------------
def _model_worker(rank: int, world: int, out: Path, arch: str, mixer: str, T: int, softmax: tuple = ()) -> None:
    from conftest import tiny_model

    import liger
    from liger.distributed.collectives import gather_sequence
    from liger.distributed.context import sequence_parallel
    from liger.distributed.sequence import (SequenceParallelLoss, sequence_parallel_forward, split_lengths,
                                            split_sequence)
    from liger.mixers import LigerAttention
    from liger.train.losses import next_token_loss

    _init()
    torch.manual_seed(0)
    model = liger.linearize(tiny_model(arch, layers=2 + bool(softmax)),
                            liger.LigerConfig(mixer=mixer, window=8, softmax_layers=softmax))
    lengths = split_lengths(T, world)
    tag = f"{arch} {mixer} softmax layers {softmax} T={T} rank {rank}"

    # one linearized layer: outputs and gradients of its input and of its projection weights
    attn = next(layer.self_attn for layer in model.model.layers if isinstance(layer.self_attn, LigerAttention))
    x = torch.randn(2, T, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    do = torch.randn(2, T, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    weights = [p for p in attn.parameters()]
    xf = x.clone().requires_grad_()
    pe = model.model.rotary_emb(xf, torch.arange(T)[None])
    o_ref = attn(xf, position_embeddings=pe)[0]
    ref_grads = torch.autograd.grad((o_ref * do).sum(), [xf, *weights])
    xl = split_sequence(x, lengths, rank).clone().requires_grad_()
    start = sum(lengths[:rank])
    pe = model.model.rotary_emb(xl, torch.arange(start, start + lengths[rank])[None])
    with sequence_parallel(lengths):
        o = attn(xl, position_embeddings=pe)[0]
        grads = torch.autograd.grad((o * split_sequence(do, lengths, rank)).sum(), [xl, *weights])
    _close(o, split_sequence(o_ref, lengths, rank), f"layer output {tag}")
    _close(grads[0], split_sequence(ref_grads[0], lengths, rank), f"layer d input {tag}")
    for gw, ref in zip(grads[1:], ref_grads[1:]):
        gw = gw.clone()
        dist.all_reduce(gw)  # each rank holds its slice's share of a weight's gradient
        _close(gw, ref, f"layer d weight {tag}")
    _close(gather_sequence(o, lengths), o_ref, "gathered")

    # the whole model: logits, and the loss and its gradients over all parameters
    ids = torch.randint(0, 128, (2, T), generator=torch.Generator().manual_seed(3))
    params = [p for p in model.parameters()]
    ref = model(input_ids=ids, use_cache=False).logits
    loss_ref, _ = next_token_loss(model, ids)
    ref_grads = torch.autograd.grad(loss_ref, params)
    logits = sequence_parallel_forward(model, ids).logits
    assert logits.shape[1] == lengths[rank]
    _close(logits, split_sequence(ref, lengths, rank), f"model logits {tag}")
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, : T // 3] = 0  # left padding inside rank 0's slice
    mask[0, : lengths[0] + 1] = 0  # left padding over rank 0's whole slice and into rank 1's
    ref_padded = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    padded = sequence_parallel_forward(model, ids, attention_mask=mask).logits
    keep = split_sequence(mask, lengths, rank)[..., None].float()
    _close(padded * keep, split_sequence(ref_padded, lengths, rank) * keep, f"padded model logits {tag}")
    sp_loss = SequenceParallelLoss(T)
    share, parts = sp_loss(model, ids)
    with sp_loss.context():
        grads = torch.autograd.grad(share, params)
    total = share.detach().clone()
    dist.all_reduce(total)
    assert abs(total.item() - loss_ref.item()) <= 1e-5, tag
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    _close(flat, torch.cat([g.reshape(-1) for g in ref_grads]), f"model d parameters {tag}")


@pytest.mark.parametrize("arch,mixer,T", [("llama", "gla", 37), ("qwen3", "hgrn2", 24), ("mistral", "gsa", 29),
                                          ("qwen2", "gated_deltanet", 31), ("llama", "lolcats", 35),
                                          ("qwen3", "lawcat", 27)])
def test_sequence_parallel_layer_and_model_equal_single_process(tmp_path, arch, mixer, T):
    _launch(_model_worker, 2, tmp_path, arch, mixer, T)


@pytest.mark.parametrize("arch,softmax,T", [("llama", (1,), 37),
                                            ("gemma2", (0, 1), 29)])  # sliding window 8, soft-capping
def test_sequence_parallel_hybrid_equals_single_process(tmp_path, arch, softmax, T):
    """Layers kept as softmax attention attend over the keys of every rank (gathered), not only their own."""
    _launch(_model_worker, 2, tmp_path, arch, "gla", T, softmax)


# ---- data-parallel training -----------------------------------------------------------------------------
def _train(work: Path, world: int, rank: int, steps: int, stop_at: int = 0, resume: bool = False,
           sp: bool = False):
    """LoRA training of a tiny linearized model on 4 sequences per optimizer step: 2 per micro-batch on one
    process; on `world` data-parallel processes 2 / world each; with `sp`, 2 per micro-batch split over
    the `world` processes (sequence parallelism, one replica)."""
    from conftest import tiny_model

    import liger
    from liger.distributed.runtime import ParallelContext
    from liger.distributed.sequence import SequenceParallelLoss
    from liger.train.loop import Trainer, TrainConfig
    from liger.train.losses import next_token_loss
    from liger.train.recipes import add_lora, trainable_parameters

    torch.manual_seed(0)
    model = add_lora(liger.linearize(tiny_model("llama", layers=2), liger.LigerConfig(window=8)),
                     ["q_proj", "k_proj", "v_proj"])
    blocks = torch.randint(0, 128, (9, 16), generator=torch.Generator().manual_seed(1))
    # the same global batch: 4 sequences per optimizer step
    cfg = TrainConfig(lr=5e-3, warmup_steps=1, max_steps=steps, batch_size=2 if sp else 2 // world, grad_accum=2,
                      checkpoint_every=1, precision="fp32", seed=3)
    params = trainable_parameters(model)
    loss, context, par = next_token_loss, None, None if world > 1 else ParallelContext()
    if sp:
        loss = SequenceParallelLoss(blocks.shape[1])
        context, par = loss.context, ParallelContext(rank=rank, world=world, sp=world, backend="gloo")
    trainer = Trainer(model, params, blocks, loss, cfg, work, "lora", {"run": "test"},
                      show_progress=False, parallel=par, step_context=context)
    if resume:
        assert trainer.load_checkpoint()
    if stop_at:
        def stop(step):
            if step == stop_at:
                raise KeyboardInterrupt
        trainer.on_step = stop
    try:
        trainer.run()
    except KeyboardInterrupt:
        pass
    return {n: p.detach().clone() for n, p in params.items()}


def _ddp_worker(rank: int, world: int, out: Path) -> None:
    _init()
    ref = _train(out / "single", 1, rank, 3) if rank == 0 else None  # rank 0 alone, no collectives
    dist.barrier()
    both = _train(out / "ddp", world, rank, 3)
    split = _train(out / "sp", world, rank, 3, sp=True)
    _train(out / "resumed", world, rank, 3, stop_at=2)
    resumed = _train(out / "resumed", world, rank, 3, resume=True)
    for n in both:
        assert torch.equal(both[n], resumed[n]), n
    if rank == 0:
        for n in ref:
            assert torch.allclose(both[n], ref[n], rtol=1e-4, atol=1e-6), (n, _maxdiff(both[n], ref[n]))
            assert torch.allclose(split[n], ref[n], rtol=1e-4, atol=1e-6), (n, _maxdiff(split[n], ref[n]))
        moved = sum(_maxdiff(both[n], 0 * both[n]) > 0 for n in both if "lora_B" in n)
        assert moved > 0
    torch.save(both, out / f"params-{rank}.pt")


def test_data_and_sequence_parallel_steps_equal_single_process_steps_and_resume(tmp_path):
    _launch(_ddp_worker, 2, tmp_path)
    a, b = torch.load(tmp_path / "params-0.pt"), torch.load(tmp_path / "params-1.pt")
    assert all(torch.equal(a[n], b[n]) for n in a)  # the replicas stay identical
    single = [json.loads(x) for x in (tmp_path / "single" / "train_log.jsonl").read_text().splitlines()]
    for run in ("ddp", "sp"):
        log = [json.loads(x) for x in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3]  # written once, by rank 0
        assert [r["tokens"] for r in log] == [r["tokens"] for r in single]
        for r, s in zip(log, single):  # the same loss and (pre-clipping) gradient norm as one process
            assert abs(r["loss"] - s["loss"]) < 1e-5, run
            assert abs(r["grad_norm"] - s["grad_norm"]) < 1e-5 * s["grad_norm"], run
    state = json.loads((tmp_path / "ddp" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["done"]
    assert not list(tmp_path.glob("**/.*tmp-*"))


# ---- FSDP: the frozen weights sharded over the ranks --------------------------------------------------
def _fsdp_worker(rank: int, world: int, out: Path, job_args: list) -> None:
    from torch.distributed.tensor import DTensor

    import liger.train.job as sharding  # the job calls shard_frozen through its own module's name
    from liger.cli import main

    real, seen = sharding.shard_frozen, []

    def spy(model, par, keep=(), from_rank0=False):
        empty = any(p.is_meta for p in model.parameters())  # built without its weights (ranks > 0)
        real(model, par, keep, from_rank0)
        w = next(p for n, p in model.named_parameters() if n.endswith("layers.0.mlp.up_proj.weight"))
        seen.append([empty, isinstance(w, DTensor), w.to_local().numel(), w.numel()])
        return model

    sharding.shard_frozen = spy
    assert main([*job_args, "--fsdp", "--batch-size", "1", "--out", str(out / "fsdp")]) == 0
    (out / f"sharded-{rank}.json").write_text(json.dumps(seen))


@pytest.mark.parametrize("recipe", [["--distill", "kl"],  # the teacher is the sharded student in teacher mode
                                    ["--recipe", "lolcats", "--mixer", "lolcats", "--transfer-tokens", "64"]])
def test_fsdp_job_equals_the_single_process_job(tmp_path, tiny_job, recipe):
    from safetensors.torch import load_file

    from liger.cli import main

    job = [*tiny_job, *recipe]
    assert main([*job, "--batch-size", "2", "--out", str(tmp_path / "single")]) == 0  # the same global batch
    _launch(_fsdp_worker, 2, tmp_path, job, timeout=240)
    for rank in (0, 1):  # each rank holds half of every decoder weight; only rank 0 read the weights, rank 1
        seen = json.loads((tmp_path / f"sharded-{rank}.json").read_text())  # got its shards; one model (the
        assert seen == [[rank == 1, True, 2304, 4608]], seen  # teacher shares it)
    a = json.loads((tmp_path / "single" / "report.json").read_text())
    b = json.loads((tmp_path / "fsdp" / "report.json").read_text())
    assert a["tokens_trained"] == b["tokens_trained"]
    for key in ("teacher_ppl", "converted_ppl", "student_ppl"):
        assert abs(a[key] - b[key]) <= 1e-4 * a[key], (key, a[key], b[key])
    wa = load_file(tmp_path / "single" / "model.safetensors")
    wb = load_file(tmp_path / "fsdp" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for n in wa:  # the merged LoRA updates included
        assert _maxdiff(wa[n], wb[n]) <= TOL, (n, _maxdiff(wa[n], wb[n]))
    w0 = load_file(Path(tiny_job[2]) / "model.safetensors")
    assert any(_maxdiff(wa[n], w0[n]) > 1e-4 for n in wa if "q_proj" in n)  # training changed the weights


def _sp_job_worker(rank: int, world: int, out: Path, job_args: list) -> None:
    import liger.train.job as sharding  # the job calls shard_frozen through its own module's name
    from liger.cli import main

    real = sharding.shard_frozen

    def spy(*args, **kwargs):  # records that the weights were sharded
        (out / f"sharded-{rank}").touch()
        return real(*args, **kwargs)

    sharding.shard_frozen = spy
    assert main([*job_args, "--sequence-parallel", str(world), "--out", str(out / "sp")]) == 0


@pytest.mark.parametrize("fsdp", [[], ["--fsdp"]])
def test_sequence_parallel_job_of_a_hybrid_equals_the_single_process_job(tmp_path, tiny_job, fsdp):
    """`liger linearize --sequence-parallel 2` on a 1:1 hybrid (layer 1 kept as softmax attention), also with
    the frozen weights sharded (--fsdp): the same perplexities and saved weights as one process training on
    whole sequences."""
    from safetensors.torch import load_file

    from liger.cli import main

    job = [*tiny_job, "--softmax-every", "2", "--batch-size", "2"]
    assert main([*job, "--out", str(tmp_path / "single")]) == 0
    _launch(_sp_job_worker, 2, tmp_path, [*job, *fsdp], timeout=240)
    assert (tmp_path / "sharded-1").exists() == bool(fsdp)
    a = json.loads((tmp_path / "single" / "report.json").read_text())
    b = json.loads((tmp_path / "sp" / "report.json").read_text())
    assert a["tokens_trained"] == b["tokens_trained"] and a["liger"]["softmax_every"] == b["liger"]["softmax_every"] == 2
    for key in ("teacher_ppl", "converted_ppl", "student_ppl"):
        assert abs(a[key] - b[key]) <= 1e-4 * a[key], (key, a[key], b[key])
    wa, wb = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "sp" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for n in wa:
        assert _maxdiff(wa[n], wb[n]) <= TOL, (n, _maxdiff(wa[n], wb[n]))


def test_fsdp_needs_several_processes(tiny_job, tmp_path, capsys):
    from liger.cli import main

    assert main([*tiny_job, "--fsdp", "--out", str(tmp_path / "x")]) == 2
    assert "--fsdp" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """`liger linearize` arguments for a tiny Llama saved with the bundled tokenizer, 4 optimizer steps."""
    from conftest import tiny_model
    from transformers import AutoTokenizer

    from liger.data import load_corpus
    from liger.teacher import teacher_path

    root = tmp_path_factory.mktemp("fsdp")
    tok = AutoTokenizer.from_pretrained(teacher_path())
    tiny_model("llama", vocab_size=len(tok), layers=2).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "data.txt").write_text("\n\n".join(load_corpus("builtin").train[:200]))
    return ["linearize", "--model", str(root / "model"), "--data", str(root / "data.txt"), "--seq-len", "32",
            "--eval-blocks", "3", "--max-steps", "4", "--warmup-steps", "1", "--precision", "fp32", "--quiet",
            "--window", "8"]


# ---- failures -------------------------------------------------------------------------------------------
def _failing_rank_worker(rank: int, world: int, out: Path) -> None:
    from liger.distributed.runtime import DistributedError

    _init()
    if rank == 1:
        import liger.train.loop as loop

        real = loop.Trainer.save_checkpoint

        def die_after(self, done=False):  # rank 1 dies right after step 2
            real(self, done)
            if self.step == 2:
                os._exit(3)

        loop.Trainer.save_checkpoint = die_after
    t0 = time.monotonic()
    try:
        _train(out / "work", world, rank, 6)
    except DistributedError as e:
        (out / "rank0.json").write_text(json.dumps({"error": str(e), "seconds": time.monotonic() - t0}))
        return
    raise AssertionError("rank 0 finished although rank 1 died")


def test_a_failing_rank_ends_the_run_with_a_clear_error_and_an_intact_checkpoint(tmp_path):
    codes = _launch(_failing_rank_worker, 2, tmp_path)
    assert codes == [0, 3]
    res = json.loads((tmp_path / "rank0.json").read_text())
    assert "another rank crashed" in res["error"] and "--resume" in res["error"]
    assert res["seconds"] < 60  # noticed at the next collective, not at the end of a long timeout
    state = json.loads((tmp_path / "work" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2  # the last complete checkpoint, readable
    from safetensors.torch import load_file

    assert load_file(tmp_path / "work" / "checkpoint" / "trainable.safetensors")


@pytest.mark.parametrize("rank", [0, 1])  # rank 0 waits for clients; rank 1 finds no server
def test_a_missing_rendezvous_ends_with_a_clear_error(tmp_path, rank):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "RANK": str(rank), "LOCAL_RANK": str(rank), "LIGER_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "liger.cli", "linearize", "--model", "unused", "--out", str(tmp_path / "out"),
           "--dist-timeout", "3", "--quiet"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode == 2, r.stderr
    assert "rendezvous" in r.stderr and "not all 2 processes joined" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 45
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()
