"""Where a decode step of the original and the linearized bundled teacher spends its time (same as
`liger bench profile`). See liger.bench.profile.

    python bench/profile_decode.py --out bench-results/profile [--context 8192] [--profile-batch-sizes 1,8]
"""

from liger.cli.bench import standalone

if __name__ == "__main__":
    standalone("profile")
