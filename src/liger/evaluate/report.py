"""eval.md: one table of metric | teacher | linearized | ratio, then a section per part."""

from __future__ import annotations


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows) if rows else float("nan")


def summary_rows(sec: dict) -> list[dict]:
    """[{"metric", "teacher", "linearized", "ratio", "better"}]: ratio = linearized / teacher."""
    rows: list[dict] = []

    def add(metric: str, t: float | None, s: float | None, better: str) -> None:
        ratio = s / t if t not in (None, 0) and s is not None else None
        rows.append({"metric": metric, "teacher": t, "linearized": s, "ratio": ratio, "better": better})

    if "lm" in sec:
        lm = sec["lm"]
        add("held-out perplexity", lm["teacher"]["perplexity"], lm["student"]["perplexity"], "lower")
        add("top-1 agreement with the teacher", 1.0, lm["top1_agreement"], "higher")
        add("KL(teacher || linearized), nats/token", 0.0, lm["kl"], "lower")
    for name, r in sec.get("tasks", {}).items():
        for metric in ("acc", "acc_norm"):
            add(f"{name} {metric} (chance {r['teacher']['chance']:.2f}, n={r['teacher']['n']})",
                r["teacher"][metric], r["linearized"][metric], "higher")
    if "recall" in sec:
        pk, mq = sec["recall"]["passkey"], sec["recall"]["mqar"]
        add("passkey exact recall, mean over the grid", _mean(pk["teacher"], "exact"), _mean(pk["linearized"], "exact"),
            "higher")
        add("MQAR exact recall, mean over pair counts", _mean(mq["teacher"], "exact"), _mean(mq["linearized"], "exact"),
            "higher")
    if "efficiency" in sec:
        eff = sec["efficiency"]
        for batch in sorted({r["batch"] for r in eff["teacher"]}):
            L = max(r["length"] for r in eff["teacher"] if r["batch"] == batch)
            t = next(r for r in eff["teacher"] if r["batch"] == batch and r["length"] == L)
            s = next(r for r in eff["linearized"] if r["batch"] == batch and r["length"] == L)
            add(f"prefill tokens/s at {L} tokens, batch {batch}", t["prefill_tokens_per_s"], s["prefill_tokens_per_s"],
                "higher")
            if t["decode_ms_per_step"] is not None:
                add(f"decode ms/step at {L} tokens, batch {batch}", t["decode_ms_per_step"], s["decode_ms_per_step"],
                    "lower")
            add(f"cache MiB at {L} tokens, batch {batch}", t["cache_bytes"] / 2**20, s["cache_bytes"] / 2**20, "lower")
    for task, metrics in sec.get("lm_eval", {}).get("teacher", {}).items():
        from .lm_eval_adapter import PREFERRED_METRIC

        metric = PREFERRED_METRIC.get(task, "acc_norm" if "acc_norm" in metrics else "acc")
        if metric in metrics:
            add(f"lm-eval {task} {metric}", metrics[metric], sec["lm_eval"]["linearized"][task].get(metric), "higher")
    return rows


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.4g}" if abs(x) < 1e5 else f"{x:,.0f}"
    return str(x)


def eval_markdown(res: dict) -> str:
    sec = res["sections"]
    lines = [
        f"# liger eval: {res['model']} vs. {res['teacher']}",
        "",
        f"{res['date']} on {res['machine']}",
        "",
        f"Command: `{res['command']}`",
        "",
        "| metric | teacher | linearized | ratio | better |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['metric']} | {_fmt(r['teacher'])} | {_fmt(r['linearized'])} | {_fmt(r['ratio'])} | {r['better']} |"
              for r in res["summary"]]
    if "lm" in sec:
        lm = sec["lm"]
        lines += ["", "## Language modelling", "",
                  f"{lm['blocks']} held-out blocks of {lm['seq_len']} tokens ({lm['tokens']:,} predicted tokens) from "
                  f"{lm['data']}; the same blocks for both models.", "", "![NLL by position](lm_by_position.png)"]
    if "tasks" in sec:
        lines += ["", "## Zero-shot multiple choice (offline, from held-out text)", "",
                  "Scored like lm-eval-harness: the summed log-likelihood of each choice after the context (acc) and "
                  "per character of the choice (acc_norm). cloze: the true next word of a passage vs. other words of "
                  "the same document; continuation: the true next 12 words vs. those of other passages."]
    if "recall" in sec:
        rec = sec["recall"]
        lines += ["", "## Long-context recall", "",
                  "Passkey: a 5-digit key hidden at a depth of filler text, then asked for; a cell is the fraction "
                  "of keys greedy decoding would reproduce exactly. MQAR: word -> 4-digit code pairs, then every "
                  "word asked again.", ""]
        lines += [f"![passkey {label}](passkey_{label}.png)" for label in rec["passkey"]]
        lines += ["", "| MQAR pairs | prompt tokens | teacher exact | linearized exact |", "|---|---|---|---|"]
        for t, s in zip(rec["mqar"]["teacher"], rec["mqar"]["linearized"]):
            lines.append(f"| {t['pairs']} | {t['tokens']} | {t['exact']:.2f} | {s['exact']:.2f} |")
    if "efficiency" in sec:
        lines += ["", "## Efficiency", "",
                  "Prefill: one forward pass over random tokens with a fresh cache; decode: single-token steps with "
                  "that cache. Cache: bytes of every cache tensor after decoding. Peak RSS: the process's resident "
                  "memory high-water mark during prefill + decode (both models loaded).", "",
                  "| model | context | batch | prefill s | prefill tok/s | decode ms/step | cache MiB | peak RSS MiB |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, rows in sec["efficiency"].items():
            for r in rows:
                lines.append(f"| {label} | {r['length']} | {r['batch']} | {r['prefill_s']:.2f} | "
                             f"{r['prefill_tokens_per_s']:.0f} | {_fmt(r['decode_ms_per_step'])} | "
                             f"{r['cache_bytes'] / 2**20:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} |")
        lines += ["", "![efficiency](efficiency.png)"]
    if "lm_eval" in sec:
        lines += ["", "## lm-evaluation-harness", "", "| task | metric | teacher | linearized |", "|---|---|---|---|"]
        for task, metrics in sec["lm_eval"]["teacher"].items():
            for metric, value in metrics.items():
                lines.append(f"| {task} | {metric} | {_fmt(value)} | {_fmt(sec['lm_eval']['linearized'][task].get(metric))} |")
    return "\n".join(lines) + "\n"
