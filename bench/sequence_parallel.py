"""LASP-2 sequence parallelism over gloo: time and bytes of 2 processes vs. 1, and the communication
volume per layer of LASP-2 vs. ring attention for Llama-3-8B. See docs/SCALING.md.

Each case is one Liger attention core without its projections: forward and backward of GLA plus the
64-token window branch, B=1, Hq heads (Hk key/value heads), head_dim D, T tokens. One process runs
`chunk_gla` + `window_attention` on all T tokens; each of 2 processes runs `chunk_gla_sp` +
`window_halo` + `window_attention` on its T/2 (time: the slower rank's; bytes: this rank's share of the
collectives, counted by wrapping them: the all-gathers' inputs forward and the reduce-scatters' outputs
backward; with P processes each rank receives P - 1 times that).

    python bench/sequence_parallel.py [--tokens 4096 16384] [--out bench-results/sequence_parallel]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import time

import torch

HEADS, KV_HEADS, HEAD_DIM, WINDOW = 8, 2, 64, 64


def _inputs(T: int):
    gen = torch.Generator().manual_seed(T)
    q = torch.randn(1, T, HEADS, HEAD_DIM, generator=gen)
    k = torch.randn(1, T, KV_HEADS, HEAD_DIM, generator=gen)
    v = torch.randn(1, T, KV_HEADS, HEAD_DIM, generator=gen)
    g = torch.nn.functional.logsigmoid(torch.randn(1, T, KV_HEADS, HEAD_DIM, generator=gen)) / 16
    return q, k, v, g


def _case(T: int, repeats: int, rank: int = 0, world: int = 1) -> dict:
    """Median seconds of one forward+backward on this rank, and the bytes it gave to collectives per call."""
    from liger.distributed import collectives
    from liger.distributed.sequence import split_lengths, split_sequence

    lengths = split_lengths(T, world)
    q, k, v, g = (split_sequence(x, lengths, rank).clone().requires_grad_() for x in _inputs(T))
    sent = [0]

    def counting(fn, arg):
        def wrapper(*args, **kwargs):  # this rank's share: the all-gather's input, the reduce-scatter's output
            sent[0] += args[arg].numel() * args[arg].element_size()
            return fn(*args, **kwargs)
        return wrapper

    real = collectives._all_gather_single, collectives._reduce_scatter_single
    collectives._all_gather_single, collectives._reduce_scatter_single = counting(real[0], 1), counting(real[1], 0)
    try:
        return _measure(T, repeats, rank, world, lengths, q, k, v, g, sent)
    finally:
        collectives._all_gather_single, collectives._reduce_scatter_single = real


def _measure(T, repeats, rank, world, lengths, q, k, v, g, sent) -> dict:
    import torch.distributed as dist

    from liger.bench.common import timeit
    from liger.distributed import lasp as sp
    from liger.distributed.collectives import all_gather_differentiable
    from liger.ops import chunk_gla, window_attention

    def step():
        if world > 1:
            o, _ = sp.chunk_gla_sp(q, k, v, g, scale=1.0)
            past = sp.window_halo(k, v, None, WINDOW, lengths)
        else:
            o, _ = chunk_gla(q, k, v, g, scale=1.0)
            past = None
        w = window_attention(q, k, v, WINDOW, past=past)
        (o + w).square().mean().backward()
        if world > 1:
            dist.barrier()  # the time of a step is the slower rank's

    seconds = timeit(step, repeats=repeats, warmup=1, budget_s=120)
    sent[0] = 0
    step()
    res = {"seconds": seconds, "bytes_per_rank": sent[0]}
    if world > 1:
        t = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        res["seconds"] = t.item()
        comm = torch.zeros(1, KV_HEADS, HEAD_DIM, HEAD_DIM + 1, requires_grad=True)

        def collective_only():  # the state all-gather (forward) and reduce-scatter (backward) alone
            all_gather_differentiable(comm).sum().backward()

        res["state_collective_seconds"] = timeit(collective_only, repeats=20, warmup=2, budget_s=30)
    return res


def _worker(rank: int, world: int, port: int, cases: list[int], repeats: int, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = [_case(T, repeats, rank, world) for T in cases]
        if rank == 0:
            queue.put(out)
    finally:
        dist.destroy_process_group()


def _two_processes(cases: list[int], repeats: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, cases, repeats, queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = queue.get(timeout=1800)
    for p in procs:
        p.join()
    return out


def communication_table(world: int = 8, batch: int = 1) -> list[dict]:
    """Bytes each rank receives per layer, forward, Llama-3-8B attention shape (32 query heads, 8 key/value
    heads, head_dim 128): LASP-2 gathers P - 1 float32 states [Hk, K, V] with their decays [Hk, K], and
    P - 1 window halos of 63 keys, values and validity flags (float32, as liger sends them); ring attention
    passes every other rank's K and V (bf16) around the ring."""
    Hk, D, L = 8, 128, WINDOW - 1
    state = batch * Hk * D * (D + 1) * 4
    halo = batch * L * Hk * (2 * D + 1) * 4
    rows = []
    for T in (32 * 1024, 128 * 1024, 512 * 1024, 1024 * 1024):
        ring = batch * (world - 1) / world * T * Hk * D * 2 * 2  # K and V, bf16
        lasp = (world - 1) * (state + halo)
        rows.append({"tokens": T, "P": world, "LASP-2 MiB": lasp / 2**20, "ring attention MiB": ring / 2**20,
                     "ratio": ring / lasp, "32 layers, LASP-2 MiB": 32 * lasp / 2**20,
                     "32 layers, ring GiB": 32 * ring / 2**30})
    return rows


def main(argv: list[str] | None = None) -> None:
    from liger.bench.common import markdown_table, write_results
    from liger.runinfo import header

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="folder for sequence_parallel.json / .md")
    args = ap.parse_args(argv)

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for T in args.tokens:
            r = _case(T, args.repeats)
            rows.append({"tokens": T, "setup": f"1 process, {threads} thread(s)", "ms": 1000 * r["seconds"],
                         "payload bytes per rank": 0})
    t0 = time.perf_counter()
    for T, r in zip(args.tokens, _two_processes(args.tokens, args.repeats)):
        rows.append({"tokens": T, "setup": "2 processes (gloo), 1 thread each", "ms": 1000 * r["seconds"],
                     "payload bytes per rank": r["bytes_per_rank"],
                     "state all-gather+reduce-scatter ms": 1000 * r["state_collective_seconds"]})
    print(f"2-process runs took {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for r in rows:
        base = next(x for x in rows if x["tokens"] == r["tokens"] and x["setup"].startswith("1 process, 1"))
        r["speed-up vs. 1 process, 1 thread"] = base["ms"] / r["ms"]
    comm = communication_table()
    head = header()
    md = (f"{head['date']}, {head['machine']}\nCommand: `{head['command']}`\n\n"
          f"One Liger attention core (GLA + {WINDOW}-token window), B=1, {HEADS} heads ({KV_HEADS} key/value), "
          f"head_dim {HEAD_DIM}, forward + backward, float32:\n\n"
          + markdown_table(rows, ["tokens", "setup", "ms", "speed-up vs. 1 process, 1 thread",
                                  "payload bytes per rank", "state all-gather+reduce-scatter ms"])
          + "\n\nPer layer and rank, forward, Llama-3-8B attention (8 KV heads, head_dim 128), batch 1:\n\n"
          + markdown_table(comm, list(comm[0])) + "\n")
    print(md)
    if args.out:
        write_results(args.out, "sequence_parallel", {**head, "cases": rows, "communication": comm}, md)


if __name__ == "__main__":
    main()
