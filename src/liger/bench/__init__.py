"""Benchmarks whose results go to docs/: each writes JSON and a markdown table to a folder.

ops, model, train, profile: one benchmark each, its options a dataclass and `run(options, out)`; suite:
`liger bench all`; common: timing, tables, plots. Their flags: liger.cli.bench."""
