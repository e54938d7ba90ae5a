"""The PNG plots of the reports (`liger linearize`, `liger eval`, `liger bench`): matplotlib with the Agg
backend, imported on first use (it is slow to import and only the reports need it)."""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay `fig` out, write it to `path` as a PNG (110 dpi; folders created; written to a temporary name and
    renamed, so an interrupted run never leaves half a file) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path
