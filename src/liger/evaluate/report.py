"""eval.md: one table of metric | teacher | linearized | ratio, then a section per part; and the run header
(date, machine, exact command) recorded in eval.json."""

from __future__ import annotations

from ..runinfo import command_line, machine_in_words, now
from .lm_eval_adapter import PREFERRED_METRIC
from .quality import bucket_label, quality_markdown, set_figures


def run_header(argv: list[str] | None = None) -> dict:
    """{"date", "machine", "command"}: the command as typed (shell-quoted), default `sys.argv`."""
    return {"date": now(zone=True), "machine": machine_in_words(), "command": command_line(argv)}


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
        if "ood" in lm:
            add("out-of-domain perplexity", lm["ood"]["teacher"]["perplexity"], lm["ood"]["student"]["perplexity"],
                "lower")
            add("out-of-domain top-1 agreement with the teacher", 1.0, lm["ood"]["top1_agreement"], "higher")
            add("out-of-domain KL(teacher || linearized), nats/token", 0.0, lm["ood"]["kl"], "lower")
        pos = lm.get("positions")
        if pos:
            add(f"out-of-domain perplexity at positions {bucket_label(pos['buckets'][-1])} of a long document",
                pos["teacher_ppl"][-1], pos["student_ppl"][-1], "lower")
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
        if "cache_bytes" in sec["recall"]:  # the memory those recall figures were bought with
            L = max(r["length"] for r in pk["teacher"])
            cb = sec["recall"]["cache_bytes"]
            add(f"cache MiB at {L} tokens (the recall prompts' longest), batch 1", cb["teacher"] / 2**20,
                cb["linearized"] / 2**20, "lower")
    if "efficiency" in sec:
        eff = sec["efficiency"]
        for batch in sorted({r["batch"] for r in eff["teacher"]}):
            L = max(r["context"] for r in eff["teacher"] if r["batch"] == batch)
            t = next(r for r in eff["teacher"] if r["batch"] == batch and r["context"] == L)
            s = next(r for r in eff["linearized"] if r["batch"] == batch and r["context"] == L)
            add(f"prefill tokens/s at {L} tokens, batch {batch}", t["prefill_tokens_per_s"], s["prefill_tokens_per_s"],
                "higher")
            if t["decode_ms"] is not None:
                add(f"decode ms/step at {L} tokens, batch {batch}", t["decode_ms"], s["decode_ms"],
                    "lower")
            add(f"cache MiB at {L} tokens, batch {batch}", t["cache_bytes"] / 2**20, s["cache_bytes"] / 2**20, "lower")
            add(f"peak memory above the models, MiB, at {L} tokens, batch {batch}", t["peak_extra_bytes"] / 2**20,
                s["peak_extra_bytes"] / 2**20, "lower")
    for task, metrics in sec.get("lm_eval", {}).get("teacher", {}).items():
        metric = PREFERRED_METRIC.get(task, "acc_norm" if "acc_norm" in metrics else "acc")
        if metric in metrics:
            add(f"lm-eval {task} {metric}", metrics[metric], sec["lm_eval"]["linearized"][task].get(metric), "higher")
    return rows


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_fmt(x) for x in row) + " |" for row in rows
    ]


def eval_markdown(res: dict) -> str:
    """The report: header (command, date, machine), the summary table, then one section per part."""
    sec = res["sections"]
    lines = [
        f"# liger eval: {res['model']} vs. {res['teacher']}",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}",
        f"- machine: {res['machine']}",
        "",
        "ratio = linearized / teacher.",
        "",
    ]
    lines += _table(["metric", "teacher", "linearized", "ratio", "better"],
                    [[r["metric"], r["teacher"], r["linearized"], r["ratio"], r["better"]] for r in res["summary"]])
    if "lm" in sec:
        lm = sec["lm"]
        lines += ["", "## Language modelling", "",
                  f"{lm['blocks']} held-out blocks of {lm['seq_len']} tokens ({lm['tokens']:,} predicted tokens) from "
                  f"{lm['data']}, the same blocks for both models. Perplexity = exp(mean next-token NLL); top-1 "
                  "agreement = fraction of positions where both models' argmax agree; KL(teacher || linearized) = "
                  "mean over positions of the sum over the vocabulary, in nats.", "",
                  "![NLL by position](lm_by_position.png)"]
        if "ood" in lm:
            sets = {"heldout": set_figures(lm), "ood": set_figures(lm["ood"])}
            lines += ["", "### Out of the training domain, and by position on a long document", "",
                      f"In-domain: the held-out blocks above ({lm['data']}). Out-of-domain (OOD): "
                      f"{lm['ood']['blocks']} blocks of {lm['ood']['seq_len']} tokens of {lm['ood']['data']} "
                      "(liger.data.ood); the long document shares no document or paragraph with the OOD blocks.",
                      ""]
            lines += quality_markdown(None, {"sets": sets, "positions": lm.get("positions")},
                                      {"heldout": "in-domain", "ood": "OOD"}, row_names=("converted", "linearized"),
                                      plot="lm_positions.png" if lm.get("positions") else None).rstrip("\n").split("\n")
    if "tasks" in sec:
        lines += ["", "## Zero-shot multiple choice (offline, from held-out text)", "",
                  "Scored like lm-eval-harness: the summed log-likelihood of \" \" + choice after the context (acc) "
                  "and that log-likelihood per character of the choice (acc_norm). cloze: the true next word of a "
                  "48-word passage vs. 3 other words of the same document; continuation: the true next 12 words "
                  "of a 40-word passage vs. those of 3 other passages. Items are built from the seed.", ""]
        rows = [[name, r["teacher"]["n"], r["teacher"]["chance"], r["teacher"]["acc"], r["linearized"]["acc"],
                 r["teacher"]["acc_norm"], r["linearized"]["acc_norm"]] for name, r in sec["tasks"].items()]
        lines += _table(["task", "items", "chance", "teacher acc", "linearized acc", "teacher acc_norm",
                         "linearized acc_norm"], rows)
    if "recall" in sec:
        rec = sec["recall"]
        lines += ["", "## Long-context recall", "",
                  "Scored by teacher forcing: an answer counts as recalled when every one of its tokens is the "
                  "model's argmax, i.e. exactly when greedy decoding would reproduce it. Passkey: a seeded 5-digit "
                  "key in a needle sentence placed at a depth of repeated filler text, then asked for; cells show "
                  "the exact-recall fraction and (second number) the fraction of key tokens correct. MQAR: "
                  "\"The code for <word> is <4-digit number>.\" lines, then every word asked again in a "
                  "shuffled order.", ""]
        lines += [f"![passkey {label}](passkey_{label}.png)" for label in rec["passkey"]]
        lines += [""] + _table(
            ["MQAR pairs", "prompt tokens", "teacher exact", "linearized exact", "teacher token acc",
             "linearized token acc"],
            [[t["pairs"], t["tokens"], t["exact"], s["exact"], t["token_accuracy"], s["token_accuracy"]]
             for t, s in zip(rec["mqar"]["teacher"], rec["mqar"]["linearized"])],
        ) + ["", "![MQAR](mqar.png)"]
    if "efficiency" in sec:
        method = next(iter(sec["efficiency"].values()))[0]["memory_method"]
        lines += ["", "## Efficiency", "",
                  "Prefill: one forward pass over seeded random tokens with a fresh cache (logits of the last position "
                  "only); decode: single-token steps with that cache, median step; the models back to back at each "
                  "size, after a warm-up, wall clock (expect 2x noise on a shared CPU). Cache: bytes of every cache "
                  "tensor after decoding (exact). "
                  "Peak RSS: the process's resident-memory high-water mark during prefill + decode "
                  f"({'kernel VmHWM, reset before each run' if method == 'vmhwm' else 'sampled every 2 ms'}); "
                  "extra = peak minus RSS before the run (both models stay loaded).", ""]
        rows = [[label, r["context"], r["batch"], r["prefill_s"], r["prefill_tokens_per_s"], r["decode_ms"],
                 r["decode_tokens_per_s"], r["cache_bytes"] / 2**20, r["peak_rss_bytes"] / 2**20,
                 r["peak_extra_bytes"] / 2**20]
                for label, rs in sec["efficiency"].items() for r in rs]
        lines += _table(["model", "context", "batch", "prefill s", "prefill tok/s", "decode ms/step", "decode tok/s",
                         "cache MiB", "peak RSS MiB", "extra MiB"], rows)
        lines += ["", "![efficiency](efficiency.png)"]
    if "lm_eval" in sec:
        lines += ["", "## lm-evaluation-harness", "",
                  "Zero-shot, lm_eval.simple_evaluate on HFLM over the models in memory (no chat template).", ""]
        lines += _table(["task", "metric", "teacher", "linearized"],
                        [[task, metric, value, sec["lm_eval"]["linearized"][task].get(metric)]
                         for task, metrics in sec["lm_eval"]["teacher"].items() for metric, value in metrics.items()])
    return "\n".join(lines) + "\n"
