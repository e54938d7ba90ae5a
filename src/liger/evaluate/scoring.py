"""Log-likelihood of continuations, the way lm-evaluation-harness scores multiple-choice requests.

A request is a pair of token-id lists (context, continuation). Its score is the sum over the continuation
tokens of log p(token | everything before it), and whether every continuation token is the model's argmax
(`greedy`: then greedy decoding from the context reproduces the continuation exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ContinuationScore:
    """logprob: sum of natural-log probabilities of the continuation tokens; correct: how many of them are
    the argmax of their position; n: number of continuation tokens; greedy: correct == n."""

    logprob: float
    correct: int
    n: int

    @property
    def greedy(self) -> bool:
        return self.correct == self.n


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval encodes them: whitespace at the end of the context
    moves to the continuation, the pair is encoded as one string and split where the context's own encoding
    ends. No special tokens are added; an empty context becomes the tokenizer's BOS (or EOS) token."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], whole
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx) :]


def _model_limit(model: nn.Module) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


@torch.no_grad()
def score_continuations(
    model: nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> list[ContinuationScore]:
    """Score each (context ids, continuation ids) request; results in the order of `requests`.

    Requests are batched longest first with right padding (the padding comes after every scored token, so it
    changes nothing a causal model computes for them); logits are computed only for the positions that
    predict continuation tokens. A context longer than the model's `max_position_embeddings` (minus the
    continuation) is cut from the left, as lm-eval does. `on_batch(n)` is called after each batch of n."""
    limit = _model_limit(model)
    device = next(model.parameters()).device
    seqs: list[tuple[list[int], int]] = []  # (ids, index of the first continuation token)
    for ctx, cont in requests:
        ctx, cont = list(ctx), list(cont)
        if not cont:
            raise ValueError("a continuation must have at least one token")
        if not ctx:
            raise ValueError("a context must have at least one token (use encode_pair for empty contexts)")
        if limit is not None and len(ctx) + len(cont) > limit:
            ctx = ctx[len(ctx) + len(cont) - limit :]
        seqs.append((ctx + cont, len(ctx)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out: list[ContinuationScore | None] = [None] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        T = max(len(seqs[i][0]) for i in idx)
        ids = torch.zeros(len(idx), T, dtype=torch.long)
        mask = torch.zeros(len(idx), T, dtype=torch.long)
        for r, i in enumerate(idx):
            s = seqs[i][0]
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        first = min(seqs[i][1] for i in idx) - 1  # first position whose logits predict a continuation token
        keep = torch.arange(first, T - 1, device=device)
        logits = model(ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits
        logp = torch.log_softmax(logits.float(), dim=-1)  # [b, T - 1 - first, V]; row j predicts token first+j+1
        for r, i in enumerate(idx):
            s, c = seqs[i]
            targets = torch.tensor(s[c:], device=device)
            rows = logp[r, c - 1 - first : len(s) - 1 - first]
            lp = rows.gather(-1, targets[:, None]).squeeze(-1)
            correct = int((rows.argmax(-1) == targets).sum())
            out[i] = ContinuationScore(float(lp.sum()), correct, len(targets))
        if on_batch is not None:
            on_batch(len(idx))
    return out  # type: ignore[return-value]


@torch.no_grad()
def score_spans(model: nn.Module, ids: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[ContinuationScore]:
    """Score several spans of one sequence with one forward pass: span (start, end) covers tokens
    ids[start:end] (start >= 1), each predicted from all tokens before it (teacher forcing, so a later span
    sees the true tokens of earlier ones). Logits are computed only at the positions that predict a span."""
    if any(s < 1 or e <= s or e > len(ids) for s, e in spans):
        raise ValueError(f"spans must satisfy 1 <= start < end <= {len(ids)}, got {list(spans)}")
    device = next(model.parameters()).device
    positions = sorted({p for s, e in spans for p in range(s - 1, e - 1)})
    row = {p: j for j, p in enumerate(positions)}
    x = torch.tensor([list(ids)], device=device)
    logits = model(x, logits_to_keep=torch.tensor(positions, device=device)).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for s, e in spans:
        rows = logp[[row[p] for p in range(s - 1, e - 1)]]
        targets = x[0, s:e]
        lp = rows.gather(-1, targets[:, None]).squeeze(-1)
        out.append(ContinuationScore(float(lp.sum()), int((rows.argmax(-1) == targets).sum()), e - s))
    return out
