"""How far an inexact export is from the liger model: a `native_gdn` checkpoint, optionally with some layers
turned back into the host's softmax attention (`liger.surgery.reconfigure`, no retraining), exported to
qwen3_5 (whose full attention normalises q and k, which a Llama host does not), then both models on the
same out-of-domain blocks: KL(liger || export), top-1 agreement, both perplexities.

    python bench/export_gap.py RUN [--softmax-layers 18,20] [--blocks 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import liger
from liger.data.ood import ood_eval_data
from liger.export import export
from liger.layer_scores import builtin_blocks
from liger.surgery import reconfigure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--softmax-layers", default="")
    p.add_argument("--blocks", type=int, default=4)
    a = p.parse_args()
    tok = AutoTokenizer.from_pretrained(a.run)
    model = liger.from_pretrained(a.run, dtype=torch.float32).eval()
    layers = tuple(int(i) for i in a.softmax_layers.split(",") if i)
    if layers:
        reconfigure(model, softmax_layers=layers)
    with tempfile.TemporaryDirectory() as d:
        report = export(model, "qwen3_5", d, check_ids=builtin_blocks(tok, n=1, seq_len=256, heldout=True))
        native = AutoModelForCausalLM.from_pretrained(d).eval()
        blocks, _ = ood_eval_data(tok, 512, a.blocks, long_tokens=0)
        with torch.no_grad():
            la, lb = (m(blocks).logits.float().log_softmax(-1) for m in (model, native))
    target = blocks[:, 1:, None]
    ppl = [float((-l[:, :-1].gather(-1, target).mean()).exp()) for l in (la, lb)]
    print(json.dumps({
        "run": a.run, "softmax_layers": list(layers), "exact": report.exact, "notes": report.notes,
        "ood_tokens": int(target.numel()),
        "kl_liger_to_export": round(float((la.exp() * (la - lb)).sum(-1).mean()), 4),
        "top1_agreement": round(float((la.argmax(-1) == lb.argmax(-1)).float().mean()), 4),
        "ppl_liger": round(ppl[0], 2), "ppl_export": round(ppl[1], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
