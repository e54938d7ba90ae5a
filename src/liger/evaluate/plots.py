"""PNG plots of `liger eval` results (matplotlib, Agg backend), drawn from the measured rows only."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def passkey_heatmap(rows: list[dict], title: str, path: str | Path) -> None:
    """Exact-recall rate by context length (x) and needle depth (y); each cell annotated."""
    plt = _plt()
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    grid = [[next(r["exact"] for r in rows if r["length"] == L and r["depth"] == d) for L in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, 0.6 * len(depths) + 1.8))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="passkey recalled (fraction)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def efficiency_plot(rows: dict[str, list[dict]], path: str | Path) -> None:
    """Prefill latency, decode time per step and cache bytes against context length; one line per model
    and batch size. rows: {model label: efficiency rows}."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = [("prefill_s", "prefill latency (s)"), ("decode_ms_per_step", "decode time per step (ms)"),
              ("cache_bytes", "cache after decoding (MiB)")]
    for label, rs in rows.items():
        for batch in sorted({r["batch"] for r in rs}):
            sel = sorted((r for r in rs if r["batch"] == batch), key=lambda r: r["length"])
            x = [r["length"] for r in sel]
            style = "-o" if "teacher" in label else "--s"
            for ax, (key, _) in zip(axes, panels):
                y = [r[key] / 2**20 if key == "cache_bytes" else r[key] for r in sel]
                ax.plot(x, y, style, label=f"{label}, batch {batch}")
    for ax, (_, name) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def nll_by_position(lm: dict, path: str | Path) -> None:
    """Mean next-token NLL by position in the held-out blocks, teacher vs. linearized."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in ("teacher", "student"):
        bins = lm[label]["nll_by_position"]
        ax.plot([(b["start"] + b["end"]) / 2 for b in bins], [b["nll"] for b in bins], "-o", ms=3,
                label="teacher" if label == "teacher" else "linearized")
    ax.set_xlabel("position in the block (tokens)")
    ax.set_ylabel("mean NLL (nats/token)")
    ax.set_title("held-out loss by position")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
