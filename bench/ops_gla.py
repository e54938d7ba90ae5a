"""chunk_gla forward and forward+backward vs. the token-by-token ops and causal softmax attention, and its
GFLOP/s vs. a float32 matmul (same as `liger bench ops`). See liger.bench.ops and docs/PERFORMANCE.md.

    python bench/ops_gla.py --out bench-results/ops [--lengths 512,...,32768] [--ref-lengths 512,1024] [--quick]
"""

from liger.cli.bench import standalone

if __name__ == "__main__":
    standalone("ops")
