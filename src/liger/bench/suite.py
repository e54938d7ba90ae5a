"""`liger bench all`: the ops, model and train benchmarks into subfolders of one folder, and a combined
results.json / results.md there (the header and every benchmark's targets, with links to the parts)."""

from __future__ import annotations

from pathlib import Path

from ..runinfo import header
from . import model, ops, train
from .common import header_markdown, targets_markdown, write_results


def run_all(out: str | Path, ops_opts: ops.OpsOptions, model_opts: model.ModelOptions,
            train_opts: train.TrainBenchOptions, command: str | None = None) -> dict[str, dict]:
    """Run the three benchmarks into `out`/ops, `out`/model and `out`/train, then `write_summary`; returns
    their payloads by name."""
    out = Path(out)
    payloads = {"ops": ops.run(ops_opts, out / "ops", command),
                "model": model.run(model_opts, out / "model", command),
                "train": train.run(train_opts, out / "train", command)}
    write_summary(out, payloads, command)
    return payloads


def write_summary(out: Path, payloads: dict[str, dict], command: str | None) -> None:
    """`out`/results.json and results.md: the header and every benchmark's targets, with links to the parts."""
    head = header(command)
    md = [f"# liger bench all\n\n{header_markdown(head)}"]
    for name, p in payloads.items():
        md += [f"## {name} ([{name}/results.md]({name}/results.md))\n", targets_markdown(p["targets"]), ""]
    write_results(out, "results", {**head, "targets": {n: p["targets"] for n, p in payloads.items()}}, "\n".join(md))
