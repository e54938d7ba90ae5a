"""Which low-precision matmul to use for batch-1 decoding on this CPU: one token through each linear shape
of the bundled teacher (the q/k/v/o projections, the MLP, the 49K-vocabulary output layer), median ms of
float32 `F.linear`, bfloat16 `F.linear`, liger.quantize's int8 and int4 layers (PyTorch's packed kernels),
and, when torchao is installed, torchao's `Int8WeightOnlyConfig` on a float32 layer. Interleaved, so a
drift in machine speed hits every candidate alike. Prints a markdown table (the per-token sum weights each
shape by how often the model uses it).

    python bench/weight_kernels.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from liger.quantize import Int4Linear, Int8Linear

# (in, out, uses per token) in the bundled SmolLM2-135M: 30 layers of q, o (576 -> 576), k, v (576 -> 192),
# gate, up (576 -> 1536), down (1536 -> 576), and the output layer
SHAPES = [(576, 576, 60), (576, 192, 60), (576, 1536, 60), (1536, 576, 30), (576, 49152, 1)]


def candidates(inp: int, out: int) -> dict:
    torch.manual_seed(0)
    lin = torch.nn.Linear(inp, out, bias=False)
    x = torch.randn(1, inp)
    xb, wb = x.bfloat16(), lin.weight.detach().bfloat16()
    c = {"float32": lambda: lin(x), "bf16": lambda: F.linear(xb, wb),
         "int8 (liger)": (lambda q: lambda: q(x))(Int8Linear(lin))}
    c["int4 (liger)"] = (lambda q: lambda: q(x))(Int4Linear(lin)) if Int4Linear.supports(lin) else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        tl = torch.nn.Linear(inp, out, bias=False)
        tl.weight.data.copy_(lin.weight.data)
        quantize_(tl, Int8WeightOnlyConfig())
        c["int8 (torchao)"] = lambda: tl(x)
    except ImportError:
        pass
    return c


def timeit(f, repeats: int, n: int = 50) -> float:
    for _ in range(5):
        f()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        out.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(out)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    rows, total = [], {}
    for inp, out, uses in SHAPES:
        c = {k: f for k, f in candidates(inp, out).items() if f is not None}
        ms = {k: [] for k in c}
        for _ in range(a.repeats):  # interleaved
            for k, f in c.items():
                ms[k].append(timeit(f, 1))
        med = {k: statistics.median(v) for k, v in ms.items()}
        rows.append((f"{inp} -> {out}", uses, med))
        for k, v in med.items():
            total[k] = total.get(k, 0.0) + uses * v
    names = list(total)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call, batch 1\n")
    print("| shape | uses/token | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for shape, uses, med in rows:
        print(f"| {shape} | {uses} | " + " | ".join(f"{med[k]:.3f}" if k in med else "" for k in names) + " |")
    print("| **per token** | | "
          + " | ".join(f"**{total[k]:.1f}**" for k in names) + " |")


if __name__ == "__main__":
    main()
