"""Long-context recall probes: passkey retrieval and multi-query associative recall (MQAR) in natural text.

Both are scored by teacher forcing, with one forward pass per prompt: an answer counts as recalled
(`exact`) when every one of its tokens is the model's argmax given the prompt and the answer tokens before
it, which is exactly when greedy decoding from the prompt would produce the answer. Leading whitespace-only
tokens of an answer (SmolLM2 encodes " 71432" as " " + five digits) belong to the prompt and are not scored.
`token_accuracy` (fraction of answer tokens that are the argmax) and the answer's log-likelihood are kept as
finer-grained signals. The prompts are built by `liger.data.probes` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..data.probes import (MQAR_INTRO, MQAR_KEYS, MQAR_PAIR, MQAR_RECALL, PASSKEY_FILLER, PASSKEY_INTRO,
                           PASSKEY_NEEDLE, PASSKEY_QUESTION, Probe, mqar_probe, passkey_probe)
from .scoring import score_spans

__all__ = ["MQAR_INTRO", "MQAR_KEYS", "MQAR_PAIR", "MQAR_RECALL", "PASSKEY_FILLER", "PASSKEY_INTRO", "PASSKEY_NEEDLE",
           "PASSKEY_QUESTION", "Probe", "mqar_probe", "passkey_probe", "score_probe", "passkey_grid", "mqar_sweep"]


def score_probe(model: nn.Module, probe: Probe) -> dict:
    """{"exact": fraction of answers recalled exactly, "token_accuracy", "logprob": mean per answer}."""
    scores = score_spans(model, probe.ids, probe.spans)
    return {
        "exact": sum(s.greedy for s in scores) / len(scores),
        "token_accuracy": sum(s.correct for s in scores) / sum(s.n for s in scores),
        "logprob": sum(s.logprob for s in scores) / len(scores),
    }


def _mean(rows: Sequence[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def passkey_grid(
    model: nn.Module,
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int = 1,
    seed: int = 0,
    on_probe: Callable[[int], None] | None = None,
) -> list[dict]:
    """One row per (length, depth): {"length", "depth", "exact", "token_accuracy", "logprob", "samples",
    "keys", "tokens"}, averaged over `samples` keys (sample s uses seed `seed + s`). `on_probe(tokens)` is
    called after each prompt."""
    rows = []
    for length in lengths:
        for depth in depths:
            results, keys, tokens = [], [], 0
            for s in range(samples):
                probe, info = passkey_probe(tokenizer, length, depth, seed + s)
                results.append(score_probe(model, probe))
                keys.append(info["key"])
                tokens = max(tokens, info["tokens"])
                if on_probe is not None:
                    on_probe(info["tokens"])
            rows.append({
                "length": length, "depth": depth, "samples": samples, "keys": keys, "tokens": tokens,
                **{k: _mean(results, k) for k in ("exact", "token_accuracy", "logprob")},
            })
    return rows


def mqar_sweep(
    model: nn.Module,
    tokenizer,
    pair_counts: Sequence[int],
    samples: int = 2,
    seed: int = 0,
    on_probe: Callable[[int], None] | None = None,
) -> list[dict]:
    """One row per pair count: {"pairs", "exact", "token_accuracy", "logprob", "samples", "tokens"}."""
    rows = []
    for pairs in pair_counts:
        probes = [mqar_probe(tokenizer, pairs, seed + s) for s in range(samples)]
        results = []
        for p in probes:
            results.append(score_probe(model, p))
            if on_probe is not None:
                on_probe(len(p.ids))
        rows.append({
            "pairs": pairs, "samples": samples, "tokens": max(len(p.ids) for p in probes),
            **{k: _mean(results, k) for k in ("exact", "token_accuracy", "logprob")},
        })
    return rows
