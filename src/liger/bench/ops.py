"""Op benchmark: `chunk_gla` forward and forward+backward against the token-by-token paths and against causal
softmax attention, and its achieved GFLOP/s against a float32 matrix multiply measured in the same run.

Inputs (float32, seeded): q [B, T, Hq, D], k, v [B, T, Hk, D], g [B, T, Hk, D] as in Liger-GLA (softmax
feature maps, g = logsigmoid(.) / 16); defaults are one layer of the bundled teacher: Hq=9, Hk=3, D=64.

- `chunk_gla` (liger.ops): the chunkwise-parallel op, every T in --lengths, as users get it: its forward
  (no grad) runs the C++ kernel when it is available (`liger.ops.gla.native_gla`; a compiler present and
  LIGER_NO_EXTENSIONS unset), else the PyTorch form; the row's `chunk_gla_path` says which ran
  ("native" / "torch"). When the native forward ran, the PyTorch form's forward is timed right after it on
  the same inputs (`chunk_gla_torch_fwd_ms`, `torch_fraction_of_matmul`). Forward+backward always runs
  the PyTorch form (autograd).
- `fused_recurrent_gla` (liger.ops, float32, the decode kernel) and `naive_recurrent_gla`
  (liger.ops.gla_naive, float64, the tests' reference): token by token, only at the small T of
  --ref-lengths (they are slow); nothing is extrapolated to other lengths.
- softmax attention: `F.scaled_dot_product_attention(is_causal=True, enable_gqa=True)` on [B, H, T, D].
- forward+backward: the output's backward with a fixed random gradient, gradients for q, k, v (and g).

FLOPs of chunk_gla (`gla_flops`), counted over the matmuls it executes, 2 per multiply-add, with C the chunk
length (`liger.ops.common.chunk_len`), N = ceil(T / C) chunks and G = Hq / Hk query heads per key head::

    intra-chunk  q k^T : 2 B Hk N G C C K        A v : 2 B Hk N G C C V      (full C x C blocks, as run)
    inter-chunk  k^T v : 2 B Hk N C K V          q S : 2 B Hk N G C K V
    total = 2 B Hk N C (G C (K + V) + K V (1 + G))

Element-wise work (exp, cumsum, masks) and the scan over chunk states are not counted. The intra-chunk
matmuls run in float32 for these gates (float64 only for gates whose within-chunk decay spans more than
e^40; see chunk_gla); the reference rate is float32. Softmax attention is counted as 2 B Hq T^2 D (causal
half of q k^T and p v).

With --compile, `torch.compile(chunk_gla)` (inductor, one compilation per T: the first call, timed apart as
compile_s) is timed too, forward and forward+backward, to show whether compiling pays off on this machine.
The compiled forward traces the PyTorch form (the C++ kernel is not used under torch.compile), so with the
native path its speed-up is against the native eager forward.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from ..ops import chunk_gla, fused_recurrent_gla
from ..ops.common import chunk_len
from ..ops.extension import ENV_OFF
from ..ops.gla import last_chunk_gla_path
from ..ops.gla_naive import naive_recurrent_gla
from ..errors import ConfigError
from ..runinfo import header
from .common import header_markdown, line_plot, log, markdown_table, target_row, targets_markdown, timeit, write_results

FULL_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
QUICK_LENGTHS = (512, 1024, 4096)
FULL_REF_LENGTHS = (512, 1024)  # where the token-by-token ops also run (they are slow)
QUICK_REF_LENGTHS = (512,)
MATMUL_SIZE = 2048
TARGET_T = 4096
TARGET_FRACTION = 0.35


def gla_inputs(B: int, T: int, H: int, K: int, V: int, seed: int = 0, Hq: int | None = None):
    """q [B, T, Hq, K] (Hq defaults to H), k [B, T, H, K], v [B, T, H, V], g [B, T, H, K], float32."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hq or H, K, generator=gen).softmax(-1)
    k = torch.randn(B, T, H, K, generator=gen).softmax(-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen)) / 16
    return q, k, v, g


def gla_flops(B: int, T: int, Hq: int, Hk: int, K: int, V: int, chunk_size: int = 64) -> int:
    """FLOPs of the matmuls of one `chunk_gla` forward (see the module docstring for the formula)."""
    C = chunk_len(T, chunk_size)
    N = -(-T // C)
    G = Hq // Hk
    return 2 * B * Hk * N * C * (G * C * (K + V) + K * V * (1 + G))


def attention_flops(B: int, T: int, Hq: int, D: int) -> int:
    """FLOPs of causal softmax attention's two matmuls, counting the causal half: 2 B Hq T^2 D."""
    return 2 * B * Hq * T * T * D


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n float32 matrix multiply (2 n^3 FLOPs), median of `repeats`."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    return 2 * n**3 / timeit(lambda: torch.mm(a, b), repeats=repeats, warmup=1) / 1e9


def _fwd_bwd(fn, inputs: list[torch.Tensor], grad: torch.Tensor):
    """A closure running fn(*inputs) and the backward of its output with `grad` (gradients reset first)."""

    def run():
        for x in inputs:
            x.grad = None
        fn(*inputs).backward(grad)

    return run


def _leaves(*xs: torch.Tensor) -> list[torch.Tensor]:
    return [x.detach().clone().requires_grad_(True) for x in xs]


def bench_length(T: int, B: int, Hq: int, Hk: int, D: int, backward: bool, reference: bool,
                 repeats: int = 3, budget_s: float = 30.0, compiled: bool = False) -> dict:
    """Times (ms) at one length: chunk_gla and sdpa forward (+ forward+backward), with `reference` the
    token-by-token ops too, with `compiled` torch.compile(chunk_gla). Returns one row (see `run` for the keys)."""
    q, k, v, g = gla_inputs(B, T, Hk, D, D, seed=T, Hq=Hq)
    warm = 1 if T <= 4096 else 0  # seconds-long calls need no warm-up; short ones do
    row: dict = {"T": T, "B": B, "Hq": Hq, "Hk": Hk, "D": D}
    gla = lambda q, k, v, g: chunk_gla(q, k, v, g, scale=1.0)[0]  # noqa: E731
    qa, ka, va = (x.transpose(1, 2).contiguous() for x in (torch.randn_like(q), torch.randn_like(k), v))
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hq != Hk)  # noqa: E731
    with torch.no_grad():
        row["chunk_gla_fwd_ms"] = 1e3 * timeit(lambda: gla(q, k, v, g), repeats, warm, budget_s)
        row["chunk_gla_path"] = last_chunk_gla_path()
        if row["chunk_gla_path"] == "native":  # the PyTorch form back to back, for the comparison
            with mock.patch.dict(os.environ, {ENV_OFF: "1"}):  # chunk_gla's PyTorch form
                row["chunk_gla_torch_fwd_ms"] = 1e3 * timeit(lambda: gla(q, k, v, g), repeats, warm, budget_s)
        row["sdpa_fwd_ms"] = 1e3 * timeit(lambda: sdpa(qa, ka, va), repeats, warm, budget_s)
    if backward:
        grad = torch.randn(B, T, Hq, D, generator=torch.Generator().manual_seed(1))
        step = _fwd_bwd(gla, _leaves(q, k, v, g), grad)
        row["chunk_gla_fwd_bwd_ms"] = 1e3 * timeit(step, repeats, warm, budget_s)
        step = _fwd_bwd(sdpa, _leaves(qa, ka, va), grad.transpose(1, 2).contiguous())
        row["sdpa_fwd_bwd_ms"] = 1e3 * timeit(step, repeats, warm, budget_s)
    if compiled:
        cgla = torch.compile(gla, dynamic=False)
        t0 = time.perf_counter()
        with torch.no_grad():
            o = cgla(q, k, v, g)
            row["compile_s"] = time.perf_counter() - t0
            row["compiled_max_abs_diff"] = (o - gla(q, k, v, g)).abs().max().item()
            row["chunk_gla_compiled_fwd_ms"] = 1e3 * timeit(lambda: cgla(q, k, v, g), repeats, 1, budget_s)
        row["compile_speedup_fwd"] = row["chunk_gla_fwd_ms"] / row["chunk_gla_compiled_fwd_ms"]
        if backward:
            step = _fwd_bwd(cgla, _leaves(q, k, v, g), grad)
            step()  # compiles the backward
            row["chunk_gla_compiled_fwd_bwd_ms"] = 1e3 * timeit(step, repeats, 1, budget_s)
            row["compile_speedup_fwd_bwd"] = row["chunk_gla_fwd_bwd_ms"] / row["chunk_gla_compiled_fwd_bwd_ms"]
    if reference:
        fused = lambda q, k, v, g: fused_recurrent_gla(q, k, v, g, scale=1.0)[0]  # noqa: E731
        naive = lambda q, k, v, g: naive_recurrent_gla(q, k, v, g, scale=1.0)[0]  # noqa: E731
        with torch.no_grad():
            row["fused_recurrent_fwd_ms"] = 1e3 * timeit(lambda: fused(q, k, v, g), 1, 0, budget_s)
            row["reference_fwd_ms"] = 1e3 * timeit(lambda: naive(q, k, v, g), 1, 0, budget_s)
        if backward:
            row["fused_recurrent_fwd_bwd_ms"] = 1e3 * timeit(_fwd_bwd(fused, _leaves(q, k, v, g), grad), 1, 0)
            row["reference_fwd_bwd_ms"] = 1e3 * timeit(_fwd_bwd(naive, _leaves(q, k, v, g), grad.double()), 1, 0)
    flops = gla_flops(B, T, Hq, Hk, D, D)
    row["chunk_gla_gflop"] = flops / 1e9
    row["chunk_gla_gflops_per_s"] = flops / (row["chunk_gla_fwd_ms"] / 1e3) / 1e9
    if "chunk_gla_torch_fwd_ms" in row:
        row["chunk_gla_torch_gflops_per_s"] = flops / (row["chunk_gla_torch_fwd_ms"] / 1e3) / 1e9
        row["native_speedup_fwd"] = row["chunk_gla_torch_fwd_ms"] / row["chunk_gla_fwd_ms"]
    row["sdpa_gflops_per_s"] = attention_flops(B, T, Hq, D) / (row["sdpa_fwd_ms"] / 1e3) / 1e9
    row["speedup_vs_sdpa_fwd"] = row["sdpa_fwd_ms"] / row["chunk_gla_fwd_ms"]
    if backward:
        row["speedup_vs_sdpa_fwd_bwd"] = row["sdpa_fwd_bwd_ms"] / row["chunk_gla_fwd_bwd_ms"]
    if reference:
        row["speedup_vs_reference_fwd"] = row["reference_fwd_ms"] / row["chunk_gla_fwd_ms"]
        row["speedup_vs_fused_recurrent_fwd"] = row["fused_recurrent_fwd_ms"] / row["chunk_gla_fwd_ms"]
        if backward:
            row["speedup_vs_reference_fwd_bwd"] = row["reference_fwd_bwd_ms"] / row["chunk_gla_fwd_bwd_ms"]
    return row



@dataclass
class OpsOptions:
    """What `run` measures (the flags of `liger bench ops`); a size left None is the full default, or with
    `quick` the quick one."""

    lengths: tuple[int, ...] | None = None  # FULL_LENGTHS / QUICK_LENGTHS
    ref_lengths: tuple[int, ...] | None = None  # FULL_REF_LENGTHS / QUICK_REF_LENGTHS
    heads: int = 9  # query heads, as the bundled teacher
    kv_heads: int = 3
    head_dim: int = 64  # K = V
    op_batch: int = 1
    matmul_size: int | None = None  # n of the reference n x n matmul; None: MATMUL_SIZE
    forward_only: bool = False
    op_repeats: int = 3  # timed calls per measurement, median
    compile: bool = False  # also time torch.compile(chunk_gla)
    quick: bool = False


def run(opts: OpsOptions, out: str | Path, command: str | None = None) -> dict:
    """Run the op benchmark and write results.json / results.md / PNGs to `out`. Returns the payload
    ({"header", "matmul", "rows", "targets"})."""
    lengths = opts.lengths or (QUICK_LENGTHS if opts.quick else FULL_LENGTHS)
    refs = opts.ref_lengths or (QUICK_REF_LENGTHS if opts.quick else FULL_REF_LENGTHS)
    if min(opts.heads, opts.kv_heads, opts.head_dim, opts.op_batch, opts.op_repeats) < 1:
        raise ConfigError("--heads, --kv-heads, --head-dim, --op-batch and --op-repeats must be >= 1")
    if opts.heads % opts.kv_heads:
        raise ConfigError(f"--heads ({opts.heads}) must be a multiple of --kv-heads ({opts.kv_heads})")
    n = opts.matmul_size or MATMUL_SIZE
    head = header(command)
    mm = matmul_gflops(n)
    rows = []
    for T in sorted(set(lengths) | set(refs)):
        row = bench_length(T, opts.op_batch, opts.heads, opts.kv_heads, opts.head_dim, not opts.forward_only,
                           T in refs, repeats=opts.op_repeats, compiled=opts.compile)
        row["fraction_of_matmul"] = row["chunk_gla_gflops_per_s"] / mm
        if "chunk_gla_torch_gflops_per_s" in row:
            row["torch_fraction_of_matmul"] = row["chunk_gla_torch_gflops_per_s"] / mm
        rows.append(row)
        log(f"ops T={T}: chunk_gla ({row['chunk_gla_path']}) {row['chunk_gla_fwd_ms']:.1f} ms, "
            f"sdpa {row['sdpa_fwd_ms']:.1f} ms")
    at = next((r for r in rows if r["T"] == TARGET_T), None)
    targets = [target_row(f"chunk_gla forward at T={TARGET_T} reaches >= {TARGET_FRACTION:.0%} of the float32 "
                          f"matmul GFLOP/s", at and at["fraction_of_matmul"], TARGET_FRACTION)]
    payload = {**head, "matmul": {"n": n, "gflops_per_s": mm}, "rows": rows, "targets": targets,
               "shape": {"B": opts.op_batch, "Hq": opts.heads, "Hk": opts.kv_heads, "D": opts.head_dim}}
    out = Path(out)
    write_results(out, "results", payload, ops_markdown(payload))
    ops_plots(payload, out)
    return payload


def ops_markdown(p: dict) -> str:
    s = p["shape"]
    md = [f"# chunk_gla: speed and GFLOP/s\n\n{header_markdown(p)}",
          f"B={s['B']}, Hq={s['Hq']}, Hk={s['Hk']}, K=V={s['D']}, float32 inputs. Times in ms (median). "
          f"Float32 {p['matmul']['n']}x{p['matmul']['n']} matmul: {p['matmul']['gflops_per_s']:.1f} GFLOP/s.\n",
          "## Targets\n", targets_markdown(p["targets"]), "",
          "## chunk_gla vs. causal softmax attention (scaled_dot_product_attention)\n",
          markdown_table(p["rows"], ["T", "chunk_gla_fwd_ms", "sdpa_fwd_ms", "speedup_vs_sdpa_fwd",
                                     "chunk_gla_fwd_bwd_ms", "sdpa_fwd_bwd_ms", "speedup_vs_sdpa_fwd_bwd"],
                         ["T", "chunk_gla fwd", "sdpa fwd", "speed-up fwd", "chunk_gla fwd+bwd", "sdpa fwd+bwd",
                          "speed-up fwd+bwd"]), "",
          "## Achieved GFLOP/s (chunk_gla forward, FLOPs of its matmuls; see liger.bench.ops)\n",
          markdown_table(p["rows"], ["T", "chunk_gla_path", "chunk_gla_gflop", "chunk_gla_gflops_per_s",
                                     "fraction_of_matmul", "sdpa_gflops_per_s"],
                         ["T", "path", "GFLOP", "chunk_gla GFLOP/s", "fraction of matmul", "sdpa GFLOP/s"]), ""]
    native = [r for r in p["rows"] if "chunk_gla_torch_fwd_ms" in r]
    if native:
        md += ["## chunk_gla forward: C++ kernel vs. the PyTorch form (timed back to back)\n",
               markdown_table(native, ["T", "chunk_gla_fwd_ms", "chunk_gla_torch_fwd_ms", "native_speedup_fwd",
                                       "fraction_of_matmul", "torch_fraction_of_matmul"],
                              ["T", "native fwd", "PyTorch fwd", "speed-up", "native: of matmul",
                               "PyTorch: of matmul"]), ""]
    comp = [r for r in p["rows"] if "chunk_gla_compiled_fwd_ms" in r]
    if comp:
        md += ["## torch.compile(chunk_gla) (inductor) vs. eager\n",
               markdown_table(comp, ["T", "compile_s", "chunk_gla_fwd_ms", "chunk_gla_compiled_fwd_ms",
                                     "compile_speedup_fwd", "chunk_gla_fwd_bwd_ms", "chunk_gla_compiled_fwd_bwd_ms",
                                     "compile_speedup_fwd_bwd", "compiled_max_abs_diff"],
                              ["T", "compile s", "eager fwd", "compiled fwd", "speed-up fwd", "eager fwd+bwd",
                               "compiled fwd+bwd", "speed-up fwd+bwd", "max abs diff vs. eager"]), ""]
    ref = [r for r in p["rows"] if "reference_fwd_ms" in r]
    if ref:
        md += ["## chunk_gla vs. the token-by-token ops (measured only at these T)\n",
               markdown_table(ref, ["T", "chunk_gla_fwd_ms", "fused_recurrent_fwd_ms", "reference_fwd_ms",
                                    "speedup_vs_fused_recurrent_fwd", "speedup_vs_reference_fwd",
                                    "chunk_gla_fwd_bwd_ms", "fused_recurrent_fwd_bwd_ms", "reference_fwd_bwd_ms",
                                    "speedup_vs_reference_fwd_bwd"],
                              ["T", "chunk_gla fwd", "fused_recurrent fwd", "float64 reference fwd",
                               "speed-up vs. fused", "speed-up vs. reference", "chunk_gla fwd+bwd",
                               "fused_recurrent fwd+bwd", "reference fwd+bwd", "speed-up fwd+bwd vs. reference"]),
               ""]
    return "\n".join(md)


def ops_plots(p: dict, out: Path) -> list[Path]:
    rows = p["rows"]
    T = [r["T"] for r in rows]
    col = lambda key: [r.get(key) for r in rows]  # noqa: E731
    series = {"chunk_gla fwd": (T, col("chunk_gla_fwd_ms")), "sdpa causal fwd": (T, col("sdpa_fwd_ms"))}
    if "chunk_gla_fwd_bwd_ms" in rows[0]:
        series["chunk_gla fwd+bwd"] = (T, col("chunk_gla_fwd_bwd_ms"))
        series["sdpa causal fwd+bwd"] = (T, col("sdpa_fwd_bwd_ms"))
    if any("chunk_gla_torch_fwd_ms" in r for r in rows):
        series["chunk_gla fwd, PyTorch form"] = (T, col("chunk_gla_torch_fwd_ms"))
    series["fused_recurrent fwd"] = (T, col("fused_recurrent_fwd_ms"))
    series["float64 reference fwd"] = (T, col("reference_fwd_ms"))
    files = [line_plot(out / "ops_time.png", series, "chunk_gla vs. softmax attention and token-by-token",
                       "T (tokens)", "ms")]
    files.append(line_plot(out / "ops_gflops.png",
                           {"chunk_gla fwd": (T, col("chunk_gla_gflops_per_s")),
                            "sdpa causal fwd": (T, col("sdpa_gflops_per_s"))},
                           "achieved GFLOP/s", "T (tokens)", "GFLOP/s", logy=False,
                           hline=(p["matmul"]["gflops_per_s"], f"float32 matmul {p['matmul']['n']}")))
    return files
