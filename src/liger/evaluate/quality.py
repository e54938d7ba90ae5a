"""Quality off the training domain and along a long document: the teacher and a linearized model on named
sets of packed blocks (held-out in-domain, out-of-domain; see liger.data.ood) and by position bucket on one
long document.

For every set: each model's perplexity (exp of the mean next-token NLL), the ratio student / teacher, the mean
KL(teacher || student) per predicted token in nats, and top-1 agreement (the fraction of predicted tokens where
both argmaxes are equal). By position: one forward pass of each model over the long document [1, L]; the bucket
of a prediction is the position of the token it predicts (bucket [0, 512) holds the predictions of tokens
1..511, so the buckets' token counts add up to L - 1); the same four figures per bucket.

Memory: the models run batch by batch (one batch's logits of each model alive at a time), and the
log-softmaxes and the KL are taken over chunks of positions (liger.evaluate.perplexity). The long document
keeps both models' logits, 2 x L x V x 4 bytes (3.2 GB at L = 8,192 and SmolLM2's 49,152 tokens) plus a few
chunks of 256 x V.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..plotting import pyplot, save_figure
from .perplexity import check_vocab, compare_lm, device_of, logits_of, token_stats

POSITION_BUCKETS = ((0, 512), (512, 1024), (1024, 2048), (2048, 4096), (4096, 8192))


def position_buckets(length: int) -> list[list[int]]:
    """The buckets a document of `length` tokens reaches, [start, end) by the position of the predicted token:
    POSITION_BUCKETS, doubling on past 8,192 (8K-16K, 16K-32K, ...); the last ends at `length` (partial)."""
    if length < 2:
        return []
    spans = [list(b) for b in POSITION_BUCKETS]
    while spans[-1][1] < length:
        spans.append([spans[-1][1], 2 * spans[-1][1]])
    return [[a, min(b, length)] for a, b in spans if a < length]


def bucket_label(span) -> str:
    """"0-512", "512-1K", "4K-8K"; a partial end is written in full ("4K-6000")."""
    def k(v: int) -> str:
        return f"{v // 1024}K" if v >= 1024 and v % 1024 == 0 else str(v)

    return f"{k(span[0])}-{k(span[1])}"


@contextmanager
def _eval_mode(*models):
    """Every module of `models` in eval mode inside, its own train flag restored after (the teacher may wrap
    the student: flags are saved once per module)."""
    flags = {}
    for m in models:
        if isinstance(m, nn.Module):
            for sub in m.modules():
                flags.setdefault(sub, sub.training)
    try:
        for m in models:
            if isinstance(m, nn.Module):
                m.eval()
        yield
    finally:
        for sub, flag in flags.items():
            sub.training = flag


def _ratio(s: float, t: float) -> float:
    return s / t if t else float("nan")


def set_figures(r: dict) -> dict:
    """The compact figures of a compare_lm result: {"teacher_ppl", "student_ppl", "ratio", "kl", "top1", "tokens"}."""
    t, s = r["teacher"]["perplexity"], r["student"]["perplexity"]
    return {"teacher_ppl": t, "student_ppl": s, "ratio": _ratio(s, t), "kl": r["kl"], "top1": r["top1_agreement"],
            "tokens": r["tokens"]}


def _limit(model) -> int | None:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    return int(limit) if limit else None


@torch.no_grad()
def compare_positions(student, teacher, long_ids: torch.Tensor) -> dict | None:
    """Both models over one long document `long_ids` [1, L] (cut to the teacher's max_position_embeddings):
    {"buckets": [[start, end], ...], "counts": predicted tokens per bucket, "teacher_ppl", "student_ppl",
    "ratio", "kl", "top1": per bucket, "tokens": L}; None when L < 2."""
    check_vocab(student, teacher)
    if long_ids.dim() != 2 or long_ids.shape[0] != 1:
        raise ValueError(f"long_ids must be one sequence [1, L], got shape {tuple(long_ids.shape)}")
    limit = _limit(teacher)
    if limit is not None:
        long_ids = long_ids[:, :limit]
    L = long_ids.shape[1]
    if L < 2:
        return None
    ids = long_ids.to(device_of(student))
    lt = logits_of(teacher, ids)
    ls = logits_of(student, ids)
    st = token_stats(lt, ls, long_ids)
    del lt, ls
    res: dict = {"buckets": [], "counts": [], "teacher_ppl": [], "student_ppl": [], "ratio": [], "kl": [],
                 "top1": [], "tokens": L}
    for a, b in position_buckets(L):
        sl = slice(max(a - 1, 0), b - 1)  # prediction i is of the token at position i + 1
        t = math.exp(float(st["nll_t"][0, sl].double().mean()))
        s = math.exp(float(st["nll_s"][0, sl].double().mean()))
        res["buckets"].append([a, b])
        res["counts"].append(int(st["nll_t"][0, sl].numel()))
        res["teacher_ppl"].append(t)
        res["student_ppl"].append(s)
        res["ratio"].append(_ratio(s, t))
        res["kl"].append(float(st["kl"][0, sl].double().mean()))
        res["top1"].append(float(st["agree"][0, sl].double().mean()))
    return res


@torch.no_grad()
def quality(student, teacher, sets: dict[str, torch.Tensor], long_ids: torch.Tensor | None, batch_size: int = 4,
            progress: bool = False) -> dict:
    """The teacher and the student on each named set of blocks (LongTensor [N, T], packed like liger.data.pack)
    and by position on `long_ids` [1, L] (or None). Both are called as `m(input_ids=ids, use_cache=False)`
    and need `.config` (the same vocabulary); the teacher may be a wrapper around the student. Inputs go to the
    device of the student's first parameter; every module is in eval mode during the call (flags restored).

    Returns {"sets": {name: {"teacher_ppl", "student_ppl", "ratio", "kl", "top1", "tokens"}},
             "positions": {"buckets": [[0, 512], ...] (those the document reaches; the last may be partial
             and gives its real end), "counts", "teacher_ppl", "student_ppl", "ratio", "kl", "top1": one per
             bucket, "tokens": L} or None}. ratio = student / teacher perplexity; kl in nats per predicted
    token; top1 the fraction of predicted tokens where both argmaxes agree."""
    total = sum(int(b.shape[0]) for b in sets.values()) + (1 if long_ids is not None else 0)
    out: dict = {"sets": {}, "positions": None}
    with _eval_mode(teacher, student), tqdm(total=total, desc="quality", disable=not progress, file=sys.stderr,
                                            leave=False) as bar:
        for name, blocks in sets.items():
            bar.set_postfix_str(name)
            r = compare_lm(student, teacher, blocks, batch_size=batch_size, on_batch=bar.update)
            out["sets"][name] = set_figures(r)
        if long_ids is not None:
            bar.set_postfix_str("long document")
            out["positions"] = compare_positions(student, teacher, long_ids)
            bar.update(1)
    return out


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(x if isinstance(x, str) else _fmt(x) for x in row) + " |" for row in rows
    ]


def quality_markdown(converted: dict | None, trained: dict, set_labels: dict[str, str], *,
                     row_names: tuple[str, str] = ("converted", "trained"), plot: str | None = None) -> str:
    """Markdown of `quality` results: a table with rows teacher / converted (if given) / trained and, for each
    set (in the order of `set_labels`, then any other), its perplexity, ratio, KL and top-1; then the positions
    table, one row per bucket (teacher, converted, trained perplexity and the models' ratio, KL, top-1), and
    `plot` (a PNG path) if given. The teacher's figures are the trained result's. `row_names` names the two
    model rows (e.g. ("converted", "linearized"))."""
    models = [(row_names[0], converted), (row_names[1], trained)] if converted is not None else [
        (row_names[1], trained)]
    names = [n for n in set_labels if n in trained["sets"]] + [n for n in trained["sets"] if n not in set_labels]
    lines = []
    if names:
        header = ["model"]
        for n in names:
            label = set_labels.get(n, n)
            header += [f"{label} ppl", f"{label} ratio", f"{label} KL", f"{label} top-1"]
        rows = [["teacher"] + sum(([trained["sets"][n]["teacher_ppl"], "-", "-", "-"] for n in names), [])]
        for label, q in models:
            row = [label]
            for n in names:
                f = (q.get("sets") or {}).get(n)
                row += [f["student_ppl"], f["ratio"], f["kl"], f["top1"]] if f else ["-"] * 4
            rows.append(row)
        lines += ["Perplexity (ppl), ratio = model / teacher perplexity, KL(teacher || model) in nats per token, "
                  "top-1 = fraction of tokens where both models' argmax agree; "
                  + "; ".join(f"{set_labels.get(n, n)}: {trained['sets'][n]['tokens']:,} predicted tokens"
                              for n in names) + ".", ""]
        lines += _table(header, rows)
    pos = trained.get("positions")
    if pos:
        header = ["position", "tokens", "teacher ppl"]
        for label, _ in models:
            header += [f"{label} ppl", f"{label} ratio", f"{label} KL", f"{label} top-1"]
        rows = []
        for i, span in enumerate(pos["buckets"]):
            row = [bucket_label(span), pos["counts"][i] if "counts" in pos else "-", pos["teacher_ppl"][i]]
            for _, q in models:
                p = q.get("positions")
                ok = p is not None and i < len(p["buckets"]) and p["buckets"][i] == span
                row += [p[k][i] for k in ("student_ppl", "ratio", "kl", "top1")] if ok else ["-"] * 4
            rows.append(row)
        lines += ["", f"By position on one long out-of-domain document ({pos['tokens']:,} tokens, one forward "
                  "pass per model); a token counts in the bucket of its own position.", ""]
        lines += _table(header, rows)
        if plot:
            lines += ["", f"![perplexity by position]({plot})"]
    elif "positions" in trained:
        lines += ["", "No long document: no perplexity by position."]
    return "\n".join(lines) + "\n"


def position_plot(curves: dict[str, list[float]], buckets, png_path) -> Path:
    """Perplexity by position bucket (x: the buckets, y: perplexity on a log axis), one line per model of
    `curves` ({label: one value per bucket}; None or NaN values are left out). Returns the PNG's path."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [bucket_label(b) for b in buckets]
    for i, (name, values) in enumerate(curves.items()):
        pts = [(j, v) for j, v in enumerate(values) if v is not None and math.isfinite(v) and v > 0]
        if pts:
            ax.plot(*zip(*pts), "-o" if i == 0 else "--s", ms=4, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title("perplexity by position, long out-of-domain document")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_figure(fig, png_path)
