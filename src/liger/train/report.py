"""report.md and the loss-curve PNG of a `liger linearize` run."""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluate.quality import position_plot, quality_markdown
from ..layer_scores import RULE_TEXT, scores_markdown
from ..plotting import pyplot, save_figure


STAGE_LOSS = {"attention_transfer": " (MSE, sum over layers)", "align": " (alignment error, sum over layers)",
              "distill": " (KL to the teacher + weighted cross-entropy)"}
QUALITY_SETS = {"heldout": "in-domain held-out", "ood": "out-of-domain"}


def quality_plots(r: dict, folder: str | Path) -> bool:
    """Write positions.png (perplexity by position bucket: teacher, converted, trained) if the report has the
    figures; returns whether it did."""
    q = r.get("quality", {})
    trained = q.get("trained", {}).get("positions")
    if not trained:
        return False
    curves = {"teacher": trained["teacher_ppl"], "trained": trained["student_ppl"]}
    converted = q.get("converted", {}).get("positions")
    if converted:
        curves["converted"] = converted["student_ppl"]
    position_plot(curves, trained["buckets"], Path(folder) / "positions.png")
    return True


def loss_plot(log_path: str | Path, png_path: str | Path) -> None:
    """Training loss against tokens, one line per stage, from a train_log.jsonl."""
    plt = pyplot()
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    stages = list(dict.fromkeys(r["stage"] for r in records))
    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rs = [r for r in records if r["stage"] == stage]
        ax.plot([r["tokens"] for r in rs], [r["loss"] for r in rs], lw=1, alpha=0.5, label="per step")
        k = max(1, len(rs) // 20)
        if len(rs) > k:
            smooth = [sum(r["loss"] for r in rs[max(0, i - k + 1) : i + 1]) / len(rs[max(0, i - k + 1) : i + 1])
                      for i in range(len(rs))]
            ax.plot([r["tokens"] for r in rs], smooth, lw=2, label=f"mean of {k}")
        ax.set_xlabel("tokens trained")
        ax.set_ylabel("loss" + STAGE_LOSS.get(stage, " (cross-entropy)"))
        ax.set_title(f"stage: {stage}")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, png_path)


def report_markdown(r: dict, has_plot: bool, has_positions: bool = False) -> str:
    lines = [
        f"# liger linearize: {r['model']}",
        "",
        f"{r['date']} on {r['machine']}",
        "",
        f"Command: `{r['command']}`",
        "",
        *_quality_lines(r, has_positions),
        "| | held-out perplexity | vs. teacher |",
        "|---|---|---|",
        f"| teacher | {r['teacher_ppl']:.2f} | 1.00 |",
        f"| converted, before training | {r['converted_ppl']:,.1f} | {r['converted_ppl'] / r['teacher_ppl']:,.1f} |",
        f"| linearized, after training | {r['student_ppl']:.2f} | {r['ratio']:.3f} |",
        "",
        f"- recipe: `{r['recipe']}`; {_mixer(r['liger'])}" + _recipe_knobs(r),
        f"- data: {r['data']}; {r['seq_len']}-token blocks; held-out: {r['heldout_tokens']:,} tokens",
        f"- tokens trained: {r['tokens_trained']:,}; training time {r['train_seconds'] / 60:.1f} min; "
        f"whole run {r['wall_seconds'] / 60:.1f} min",
        f"- trainable parameters: {r['trainable_parameters']:,}",
        "",
        "| stage | steps | tokens | minutes | lr | stopped by | final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in r["stages"]:
        loss = "" if s["final_loss"] is None else f"{s['final_loss']:.4f}"
        lines.append(f"| {s['stage']} | {s['steps']} | {s['tokens']:,} | {s['seconds'] / 60:.1f} | {s['lr']:g} | "
                     f"{s['stopped_by']} | {loss} |")
    if r.get("layer_scores"):  # --softmax-layers auto:N
        rule = r["layer_scores"][0].get("rule", "transfer")  # scores saved before --softmax-select: transfer
        lines += ["", f"Per-layer scores for `--softmax-layers auto:N --softmax-select {rule}` ({RULE_TEXT[rule]}):",
                  "", scores_markdown(r["layer_scores"])]
    if has_plot:
        lines += ["", "![loss curve](loss.png)"]
    return "\n".join(lines) + "\n"


def _quality_lines(r: dict, has_positions: bool) -> list[str]:
    """The out-of-domain and by-position section (first in the report), if the run measured it."""
    q = r.get("quality", {})
    if "trained" not in q:
        return []
    lines = ["## Quality kept: out of domain and by position", "",
             f"Out-of-domain text: {r.get('ood_data', 'see liger.data.ood')}. KL = KL(teacher || model) in nats per "
             "token; top-1 = agreement of the two models' most likely next token.", "",
             quality_markdown(q.get("converted"), q["trained"], QUALITY_SETS), ""]
    if has_positions:
        lines += ["![perplexity by position](positions.png)", ""]
    return lines + ["## In-domain held-out perplexity", ""]


def _recipe_knobs(r: dict) -> str:
    knobs = []
    if r["distill_weight"]:
        knobs.append(f"distill KL weight {r['distill_weight']}")
    if r["recipe"] in ("distill", "staged"):
        knobs.append(f"KL weight {r['kl_weight']:g}, cross-entropy weight {r['ce_weight']:g}")
    if r["recipe"] in ("align", "staged"):
        knobs.append(f"alignment error {r['align_metric']}")
    if r["recipe"] == "staged":
        knobs.append(f"alignment share of the budget {r['align_fraction']:g}")
    return "".join(f"; {k}" for k in knobs)


def _mixer(c: dict) -> str:
    window = f"window {c['window']} (mix {c['mix'][0]:g}/{c['mix'][1]:g})" if c["window"] else "no window"
    soft = f", softmax layers {c['softmax_layers']}" if c["softmax_layers"] else ""
    if c.get("softmax_every"):
        soft += f", one softmax layer in every {c['softmax_every']}"
    if c.get("sparse_cache"):
        soft += f", sparse cache of {c['sparse_cache']} tokens per layer and key head"
    return f"mixer `{c['mixer']}` ({c['feature_map']} feature map), {window}{soft}"


def comparison_table(run_dirs: list[str | Path]) -> str:
    """A markdown table comparing `liger linearize` runs from their report.json files: the command, held-out
    perplexity of teacher / converted / trained model, ratio to the teacher, tokens and training minutes.
    Runs are only comparable when their held-out sets match (same --data, --seq-len): the teacher column
    shows it."""
    rows = ["| run | command | out-of-domain ppl / teacher | OOD top-1 | OOD KL | ppl / teacher by position | "
            "in-domain ppl / teacher | converted in-domain ppl | tokens | train min |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for d in run_dirs:
        path = Path(d) / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {d} the output folder of `liger linearize`?")
        r = json.loads(path.read_text())
        q = r.get("quality", {}).get("trained")
        ood = q["sets"]["ood"] if q else None
        pos = q.get("positions") if q else None
        rows.append(
            f"| {Path(d).name} | `{r['command']}` | "
            + (f"{ood['ratio']:.3f} | {ood['top1']:.3f} | {ood['kl']:.3f} | " if ood else "- | - | - | ")
            + ("/".join(f"{x:.2f}" for x in pos["ratio"]) if pos else "-")
            + f" | {r['ratio']:.3f} | {r['converted_ppl']:,.1f} | {r['tokens_trained']:,} | "
            f"{r['train_seconds'] / 60:.1f} |"
        )
    return "\n".join(rows)


def _smooth(values: list[float], k: int) -> list[float]:
    return [sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def runs_loss_plot(run_dirs: list[str | Path], png_path: str | Path) -> None:
    """The training loss of several runs in one figure: one panel per stage (its own loss), one line per run
    (a running mean of 10 steps), against the tokens trained in the run so far."""
    plt = pyplot()
    logs = {}
    for d in run_dirs:
        path = Path(d) / "train_log.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {d} the output folder of `liger linearize`?")
        logs[Path(d).name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    stages = list(dict.fromkeys(r["stage"] for records in logs.values() for r in records))
    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for name, records in logs.items():
            xs, ys, offset, last = [], [], 0, {}
            for r in records:  # each stage counts its tokens from 0: add those of the stages before it
                if last and r["stage"] != last["stage"]:
                    offset += last["tokens"]
                if r["stage"] == stage:
                    xs.append(offset + r["tokens"])
                    ys.append(r["loss"])
                last = r
            if xs:
                ax.plot(xs, _smooth(ys, 10), lw=1.5, label=name)
        ax.set_xlabel("tokens trained in the run")
        ax.set_ylabel("loss" + STAGE_LOSS.get(stage, " (cross-entropy)"))
        ax.set_title(f"stage: {stage}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, png_path)


if __name__ == "__main__":  # python -m liger.train.report RUN_DIR... [--plot PNG]: the comparison table
    import argparse

    ap = argparse.ArgumentParser(prog="python -m liger.train.report",
                                 description="Compare `liger linearize` runs: a markdown table of their reports.")
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--plot", metavar="PNG", help="also plot their loss curves, one panel per stage")
    a = ap.parse_args()
    print(comparison_table(a.runs))
    if a.plot:
        runs_loss_plot(a.runs, a.plot)
