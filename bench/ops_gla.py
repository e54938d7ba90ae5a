"""chunk_gla vs. the token-by-token reference (B=1, H=4, T=4096, K=V=64). See docs/PERFORMANCE.md."""

from liger.bench.ops import main

if __name__ == "__main__":
    main()
