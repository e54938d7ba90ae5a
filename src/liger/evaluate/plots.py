"""PNG plots of `liger eval` results (matplotlib, Agg backend), drawn from the measured rows only."""

from __future__ import annotations

from pathlib import Path

from ..plotting import pyplot, save_figure
from .quality import position_plot

LABELS = {"teacher": "teacher", "student": "linearized", "linearized": "linearized"}


def passkey_heatmap(rows: list[dict], title: str, path: str | Path) -> None:
    """Exact-recall rate (colour, first number) by context length (x) and needle depth (y); the second number
    in a cell is the fraction of key tokens that were the argmax."""
    plt = pyplot()
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    cell = {(r["length"], r["depth"]): r for r in rows}
    grid = [[cell[L, d]["exact"] for L in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.3 * len(lengths) + 2.5, 0.65 * len(depths) + 1.9))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (0 = start)")
    for i, d in enumerate(depths):
        for j, L in enumerate(lengths):
            r = cell[L, d]
            ax.text(j, i, f"{r['exact']:.2f}\n{r['token_accuracy']:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="passkey recalled exactly (fraction)")
    save_figure(fig, path)


def mqar_plot(rows: dict[str, list[dict]], path: str | Path) -> None:
    """MQAR exact recall and token accuracy against the number of key-value pairs; one line per model."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, rs in rows.items():
        rs = sorted(rs, key=lambda r: r["pairs"])
        style = "-o" if label == "teacher" else "--s"
        for ax, key in zip(axes, ("exact", "token_accuracy")):
            ax.plot([r["pairs"] for r in rs], [r[key] for r in rs], style, label=LABELS.get(label, label))
    for ax, name in zip(axes, ("codes recalled exactly", "code tokens correct")):
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("key-value pairs in the prompt")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("multi-query associative recall")
    save_figure(fig, path)


def efficiency_plot(rows: dict[str, list[dict]], path: str | Path) -> None:
    """Prefill latency, decode time per step, peak extra RSS and cache bytes against context length; one line
    per model and batch size. rows: {model label: efficiency rows}."""
    plt = pyplot()
    panels = [("prefill_s", "prefill latency (s)", 1), ("decode_ms", "decode time per step (ms)", 1),
              ("peak_extra_bytes", "peak memory above the loaded models (MiB)", 2**20),
              ("cache_bytes", "cache after decoding (MiB)", 2**20)]
    fig, axes = plt.subplots(1, len(panels), figsize=(19, 4.5))
    for label, rs in rows.items():
        for batch in sorted({r["batch"] for r in rs}):
            sel = sorted((r for r in rs if r["batch"] == batch), key=lambda r: r["context"])
            style = "-o" if label == "teacher" else "--s"
            for ax, (key, _, scale) in zip(axes, panels):
                pts = [(r["context"], r[key] / scale) for r in sel if r[key] is not None]
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{LABELS.get(label, label)}, batch {batch}")
    for ax, (_, name, _) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def nll_by_position(lm: dict, path: str | Path) -> None:
    """Mean next-token NLL by position in the held-out blocks, teacher vs. linearized."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in ("teacher", "student"):
        bins = lm[label]["nll_by_position"]
        ax.plot([(b["start"] + b["end"]) / 2 for b in bins], [b["nll"] for b in bins], "-o", ms=3, label=LABELS[label])
    ax.set_xlabel("position in the block (tokens)")
    ax.set_ylabel("mean NLL (nats/token)")
    ax.set_title("held-out loss by position")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def draw_all(sec: dict, folder: str | Path) -> list[str]:
    """Every plot the sections in `sec` allow, written into `folder`; returns their file names."""
    folder = Path(folder)
    names: list[str] = []
    if "lm" in sec:
        nll_by_position(sec["lm"], folder / "lm_by_position.png")
        names.append("lm_by_position.png")
        pos = sec["lm"].get("positions")
        if pos:
            position_plot({"teacher": pos["teacher_ppl"], "linearized": pos["student_ppl"]}, pos["buckets"],
                          folder / "lm_positions.png")
            names.append("lm_positions.png")
    if "recall" in sec:
        for label, rows in sec["recall"]["passkey"].items():
            passkey_heatmap(rows, f"passkey retrieval: {LABELS.get(label, label)}", folder / f"passkey_{label}.png")
            names.append(f"passkey_{label}.png")
        mqar_plot(sec["recall"]["mqar"], folder / "mqar.png")
        names.append("mqar.png")
    if "efficiency" in sec:
        efficiency_plot(sec["efficiency"], folder / "efficiency.png")
        names.append("efficiency.png")
    return names
