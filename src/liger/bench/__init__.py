"""Benchmarks whose results go to docs/: each writes JSON and a markdown table to a folder."""
