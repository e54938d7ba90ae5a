"""Recall against cache bytes: one linearized checkpoint turned, without retraining, into hybrids and sparse-cache
variants, each measured on passkey and MQAR recall, out-of-domain perplexity and its cache MiB at 8K tokens.

    python bench/recall_pareto.py MODEL [--variants linear,sparse:64,kl:2,even:2,kl:2+sparse:128,teacher,...]
        [--lengths 512,2048,8192] [--depths 0,0.25,0.5,0.75,1] [--mqar 4,8,16,32] [--ood-blocks 8]
        [--out docs/results/recall-pareto]

A variant is `+`-joined parts (liger.surgery.reconfigure on a copy of MODEL):
- `linear`: the checkpoint as it is; `teacher`: the bundled teacher;
- `sparse:M`: the sparse cache with M tokens per layer and key head (liger.mixers.sparse);
- `kl:N`: the N layers whose restoration to softmax attention lowers the KL to the teacher most, measured on
  this (trained) checkpoint, each layer restored alone, on 4 held-out blocks of 512 tokens of the built-in
  corpus (its training domain; the evaluation text below is out of domain);
- `even:N`: N evenly spaced layers restored (layer round((i + 1) * L / (N + 1)), i < N).
Restored layers use the checkpoint's own q/k/v/o weights (LoRA merged), as the host's softmax attention.

Per variant: passkey exact recall (mean over lengths x depths, one key each) and per length, the answer's mean
log-likelihood (`passkey_logprob`, in pareto.json), MQAR exact recall
(mean over pair counts, 2 samples each), perplexity on --ood-blocks blocks of 512 out-of-domain tokens
(liger.data.ood), and the cache of one sequence at 8,192 tokens in float32 (liger.cache.cache_footprint).
Writes <out>/pareto.json (each variant as it finishes; a rerun skips the variants already there), pareto.md
and pareto.png (passkey and MQAR recall against cache MiB, the teacher's point on it).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import liger
from liger.cache import cache_footprint
from liger.config import config_of
from liger.data import load_corpus, pack
from liger.data.ood import ood_eval_data
from liger.evaluate.perplexity import perplexity
from liger.evaluate.recall import mqar_sweep, passkey_grid
from liger.mixers import LigerAttention
from liger.plotting import pyplot, save_figure
from liger.surgery import reconfigure
from liger.teacher import load_teacher

CONTEXT = 8192
MIB = 2**20


def kl_ranking(model, teacher, blocks: torch.Tensor) -> list[dict]:
    """Per linearized layer: mean KL(teacher || model) per token on `blocks` with that layer alone restored to
    softmax attention (teacher mode of its LigerAttention), and the drop from the all-linear KL."""
    attns = {i: layer.self_attn for i, layer in enumerate(model.model.layers) if isinstance(layer.self_attn, LigerAttention)}

    def kl() -> float:
        total = 0.0
        for b, t in zip(blocks, teacher_logp):
            s = F.log_softmax(model(input_ids=b[None], use_cache=False).logits[0].float(), -1)
            total += (t.exp() * (t - s)).sum(-1).mean().item()
        return total / len(blocks)

    with torch.no_grad():
        teacher_logp = [F.log_softmax(teacher(input_ids=b[None], use_cache=False).logits[0].float(), -1) for b in blocks]
        base = kl()
        rows = []
        for i, attn in attns.items():
            attn.softmax_only = True
            try:
                value = kl()
            finally:
                attn.softmax_only = False
            rows.append({"layer": i, "kl": value, "kl_drop": base - value})
            print(f"  layer {i}: KL {value:.4f} (all linear {base:.4f})", file=sys.stderr)
    return rows


def even_layers(n: int, num_layers: int) -> tuple[int, ...]:
    return tuple(sorted({round((i + 1) * num_layers / (n + 1)) for i in range(n)}))


def build(spec: str, model, ranking: list[dict]):
    softmax, sparse = set(), None
    for part in spec.split("+"):
        kind, _, arg = part.partition(":")
        if kind == "linear":
            continue
        if kind == "sparse":
            sparse = int(arg)
        elif kind == "kl":
            best = sorted(ranking, key=lambda r: (-r["kl_drop"], r["layer"]))[: int(arg)]
            softmax |= {r["layer"] for r in best}
        elif kind == "even":
            softmax |= set(even_layers(int(arg), len(model.model.layers)))
        else:
            raise SystemExit(f"unknown variant part {part!r}: use linear, sparse:M, kl:N, even:N or teacher")
    m = copy.deepcopy(model)
    reconfigure(m, softmax_layers=tuple(sorted(softmax)), sparse_cache=sparse)
    return m, sorted(config_of(m).softmax_layer_set(len(m.model.layers)))  # restored and the checkpoint's own


def measure(model, tok, args, ood: torch.Tensor) -> dict:
    with torch.no_grad():
        pk = passkey_grid(model, tok, args.lengths, args.depths)
        mq = mqar_sweep(model, tok, args.mqar)
        ppl = perplexity(model, ood)["perplexity"]
    fp = cache_footprint(model, torch.float32)
    by_len = {str(n): sum(r["exact"] for r in pk if r["length"] == n) / len(args.depths) for n in args.lengths}
    return {"passkey": sum(r["exact"] for r in pk) / len(pk), "passkey_by_length": by_len,
            "passkey_logprob": sum(r["logprob"] for r in pk) / len(pk),
            "mqar": sum(r["exact"] for r in mq) / len(mq), "ood_ppl": ppl,
            "cache_mib": (fp["fixed"] + CONTEXT * fp["per_token"]) / MIB,
            "teacher_cache_mib": CONTEXT * fp["original_per_token"] / MIB}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--variants", default="teacher,linear,sparse:64,sparse:256,kl:1,kl:2,kl:3,kl:7,even:1,even:2,"
                   "even:3,even:7,kl:1+sparse:256,kl:2+sparse:128")
    p.add_argument("--lengths", default="512,2048,8192")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--mqar", default="4,8,16,32")
    p.add_argument("--ood-blocks", type=int, default=8)
    p.add_argument("--out", default="docs/results/recall-pareto")
    args = p.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.depths = [float(x) for x in args.depths.split(",")]
    args.mqar = [int(x) for x in args.mqar.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pareto.json"
    results = json.loads(path.read_text()) if path.is_file() else {"variants": {}}
    results["command"] = "python " + " ".join(sys.argv)  # the latest run (earlier ones measured a subset)

    torch.manual_seed(0)
    model = liger.from_pretrained(args.model, dtype=torch.float32).eval()
    teacher, tok = load_teacher()
    ood, _ = ood_eval_data(tok, 512, args.ood_blocks, long_tokens=0)
    variants = args.variants.split(",")
    if any("kl:" in v for v in variants) and "kl_ranking" not in results:
        print("ranking the layers by KL drop", file=sys.stderr)
        blocks = pack(load_corpus("builtin").heldout, tok, 512)[:4]
        results["kl_ranking"] = kl_ranking(model, teacher, blocks)
        path.write_text(json.dumps(results, indent=1))
    for spec in variants:
        if spec in results["variants"]:
            continue
        print(f"measuring {spec}", file=sys.stderr)
        if spec == "teacher":
            r = measure(teacher, tok, args, ood)
            r["cache_mib"], r["softmax_layers"] = r["teacher_cache_mib"], list(range(len(teacher.model.layers)))
        else:
            m, layers = build(spec, model, results.get("kl_ranking", []))
            r = {**measure(m, tok, args, ood), "softmax_layers": layers}
        results["variants"][spec] = r
        path.write_text(json.dumps(results, indent=1))
        print(f"  {spec}: passkey {r['passkey']:.3f} mqar {r['mqar']:.3f} ood ppl {r['ood_ppl']:.2f} "
              f"cache {r['cache_mib']:.1f} MiB", file=sys.stderr)
    write_report(results, out, args)


def write_report(results: dict, out: Path, args) -> None:
    rows = results["variants"]
    teacher = rows.get("teacher")
    lines = [f"Command: `{results['command']}`", "",
             "| variant | softmax layers | cache MiB at 8K | % of teacher's | passkey | " +
             " | ".join(f"passkey {n}" for n in args.lengths) + " | MQAR | OOD ppl |",
             "|---|---|---:|---:|---:|" + "---:|" * len(args.lengths) + "---:|---:|"]
    for name, r in rows.items():
        share = 100 * r["cache_mib"] / r["teacher_cache_mib"]
        layers = "all" if name == "teacher" else (",".join(map(str, r["softmax_layers"])) or "-")
        lines.append(f"| {name} | {layers} | {r['cache_mib']:.1f} | {share:.1f}% | {r['passkey']:.3f} | " +
                     " | ".join(f"{r['passkey_by_length'][str(n)]:.2f}" for n in args.lengths) +
                     f" | {r['mqar']:.3f} | {r['ood_ppl']:.2f} |")
    if "kl_ranking" in results:
        top = sorted(results["kl_ranking"], key=lambda r: -r["kl_drop"])[:8]
        lines += ["", "KL drop when one layer is restored (top 8): " +
                  ", ".join(f"{r['layer']}: {r['kl_drop']:.3f}" for r in top)]
    (out / "pareto.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key in zip(axes, ("passkey", "mqar")):
        for name, r in rows.items():
            marker = "*" if name == "teacher" else ("s" if "sparse" in name else "o")
            ax.scatter(r["cache_mib"], r[key], marker=marker, s=90 if name == "teacher" else 40)
            ax.annotate(name, (r["cache_mib"], r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if teacher:
            ax.axvline(0.1 * teacher["cache_mib"], color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("cache MiB per sequence at 8,192 tokens (float32; dotted: 10% of the teacher's)")
        ax.set_ylabel(f"{key} exact recall")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    save_figure(fig, out / "pareto.png")


if __name__ == "__main__":
    main()
