"""Op benchmark: chunk_gla against the token-by-token paths (the float64 reference and the float32 decode
kernel), at the sizes of the core issue's acceptance (B=1, H=4, K=V=64)."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ..ops import chunk_gla, fused_recurrent_gla
from ..ops.reference import naive_recurrent_gla
from .common import header, markdown_table, timeit, write_results


def gla_inputs(B: int, T: int, H: int, K: int, V: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen).softmax(-1)
    k = torch.randn(B, T, H, K, generator=gen).softmax(-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen)) / 16
    return q, k, v, g


def bench_vs_recurrent(T: int = 4096, B: int = 1, H: int = 4, K: int = 64, V: int = 64) -> dict:
    q, k, v, g = gla_inputs(B, T, H, K, V)
    with torch.no_grad():
        t_chunk = timeit(lambda: chunk_gla(q, k, v, g), repeats=7)
        t_fused = timeit(lambda: fused_recurrent_gla(q, k, v, g), repeats=3)
        t_naive = timeit(lambda: naive_recurrent_gla(q, k, v, g), repeats=1, warmup=0)
    return {
        "B": B, "T": T, "H": H, "K": K, "V": V,
        "chunk_gla_ms": 1e3 * t_chunk,
        "fused_recurrent_gla_ms": 1e3 * t_fused,
        "naive_reference_ms": 1e3 * t_naive,
        "speedup_vs_reference": t_naive / t_chunk,
        "speedup_vs_fused_recurrent": t_fused / t_chunk,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench-results/ops")
    p.add_argument("--T", type=int, default=4096)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    row = bench_vs_recurrent(T=args.T)
    head = header()
    cols = ["T", "chunk_gla_ms", "fused_recurrent_gla_ms", "naive_reference_ms", "speedup_vs_reference",
            "speedup_vs_fused_recurrent"]
    md = f"# chunk_gla vs token-by-token\n\n{head['date']}, {head['machine']}\n\n`{head['command']}`\n\n"
    md += markdown_table([row], cols) + "\n"
    write_results(args.out, "gla_vs_recurrent", {**head, "rows": [row]}, md)
    print(md)


if __name__ == "__main__":
    main()
