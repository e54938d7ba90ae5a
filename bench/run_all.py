"""All three benchmarks into OUT/ops, OUT/model and OUT/train plus a combined OUT/results.md (same as
`liger bench all`; takes the same flags).

    python bench/run_all.py --out bench-results [--quick]
"""

import sys

from liger.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "all", *sys.argv[1:]]))
