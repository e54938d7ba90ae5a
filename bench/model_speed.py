"""Linearized bundled teacher vs. the original: prefill, decode ms/token, peak memory and cache bytes at
contexts 512..16,384, batch 1 and 8 (same as `liger bench model`). See liger.bench.model.

    python bench/model_speed.py --out bench-results/model [--contexts 512,...,16384] [--batch-sizes 1,8] [--quick]
"""

from liger.cli.bench import standalone

if __name__ == "__main__":
    standalone("model")
