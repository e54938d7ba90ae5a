"""Which low-precision matmul to use for batch-1 decoding on this CPU: one token through each linear shape
of the bundled teacher (the q/k/v/o projections, the MLP, the 49K-vocabulary output layer), median ms of
float32 and bfloat16 `nn.Linear`, liger.quantize's int8 and int4 layers (PyTorch's packed kernels),
and, when torchao is installed, torchao's `Int8WeightOnlyConfig` on a float32 layer. Each call reads its
weights from memory (`candidates`). Interleaved, so a drift in machine speed hits every candidate alike. Prints a markdown table (the per-token sum weights each
shape by how often the model uses it).

    python bench/weight_kernels.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch

from liger.quantize import Int4Linear, Int8Linear

# (in, out, uses per token) in the bundled SmolLM2-135M: 30 layers of q, o (576 -> 576), k, v (576 -> 192),
# gate, up (576 -> 1536), down (1536 -> 576), and the output layer
COLD_BYTES = 256 * 2**20  # more than any CPU's last-level cache
SHAPES = [(576, 576, 60), (576, 192, 60), (576, 1536, 60), (1536, 576, 30), (576, 49152, 1)]


def candidates(inp: int, out: int) -> dict:
    """name -> a function running one call; each cycles through copies of the layer totalling >= COLD_BYTES of
    float32 weights, so that every call reads its weights from memory, as in a decode step (a layer called
    over and over would be timed from the CPU's caches)."""
    torch.manual_seed(0)
    n = max(1, COLD_BYTES // (inp * out * 4))
    lins = [torch.nn.Linear(inp, out, bias=False) for _ in range(n)]
    x = torch.randn(1, inp)
    xb = x.bfloat16()

    def cycle(layers, arg):
        it = iter(())

        def call():
            nonlocal it
            layer = next(it, None)
            if layer is None:
                it = iter(layers)
                layer = next(it)
            return layer(arg)
        return call

    c = {"float32": cycle(lins, x), "bf16": cycle([copy.deepcopy(m).bfloat16() for m in lins], xb),
         "int8 (liger)": cycle([Int8Linear(m) for m in lins], x),
         "int4 (liger)": cycle([Int4Linear(m) for m in lins], x) if Int4Linear.supports(lins[0]) else None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        tl = [copy.deepcopy(m) for m in lins]
        for m in tl:
            quantize_(m, Int8WeightOnlyConfig())
        c["int8 (torchao)"] = cycle(tl, x)
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
