"""Language modelling on held-out text: perplexity of each model and how closely the student follows the
teacher, token by token, on the same packed blocks."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

Tensor = torch.Tensor


def _log_probs(model: nn.Module, ids: Tensor) -> Tensor:
    """Float32 log-probabilities [B, T - 1, V] of the next token at positions 0..T-2 of `ids` [B, T]."""
    logits = model(ids.to(next(model.parameters()).device)).logits[:, :-1]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _nll(logp: Tensor, ids: Tensor) -> Tensor:
    """Negative log-likelihood [B, T - 1] of tokens 1..T-1 of `ids` under `logp` [B, T - 1, V]."""
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def _summary(nll: Tensor, bin_size: int) -> dict:
    """Perplexity of all predicted tokens, and the mean NLL by position in bins of `bin_size` tokens."""
    by_pos = nll.mean(0)
    bins = [
        {"start": s + 1, "end": min(s + bin_size, by_pos.numel()), "nll": float(by_pos[s : s + bin_size].mean())}
        for s in range(0, by_pos.numel(), bin_size)
    ]
    mean = float(nll.mean())
    return {"nll": mean, "perplexity": math.exp(mean), "nll_by_position": bins}


@torch.no_grad()
def perplexity(model: nn.Module, blocks: Tensor, batch_size: int = 1, bin_size: int = 32) -> dict:
    """Held-out perplexity of `model` on `blocks` (LongTensor [N, T], each row a packed block; the first token
    of a block is context only, so N * (T - 1) tokens are predicted). Returns
    {"nll", "perplexity", "tokens", "nll_by_position": [{"start", "end", "nll"}]} (NLL in nats/token)."""
    nll = torch.cat([_nll(_log_probs(model, b), b) for b in blocks.split(batch_size)])
    return {**_summary(nll, bin_size), "tokens": nll.numel()}


@torch.no_grad()
def compare_lm(
    student: nn.Module,
    teacher: nn.Module,
    blocks: Tensor,
    batch_size: int = 1,
    bin_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Both models on the same blocks (LongTensor [N, T], shared tokenizer). Returns
    {"teacher": perplexity summary, "student": perplexity summary,
     "top1_agreement": fraction of predicted positions where both argmaxes are equal,
     "kl": mean over positions of KL(teacher || student) = sum_v p_t(v) (log p_t(v) - log p_s(v)) in nats,
     "tokens": N * (T - 1), "blocks": N, "seq_len": T}."""
    if student.config.get_text_config().vocab_size != teacher.config.get_text_config().vocab_size:
        raise ValueError("teacher and student must share a vocabulary")
    nll_t, nll_s, agree, kl = [], [], 0, 0.0
    for b in blocks.split(batch_size):
        lt, ls = _log_probs(teacher, b), _log_probs(student, b)
        nll_t.append(_nll(lt, b))
        nll_s.append(_nll(ls, b))
        agree += int((lt.argmax(-1) == ls.argmax(-1)).sum())
        kl += float((lt.exp() * (lt - ls)).sum(-1).double().sum())
        if on_batch is not None:
            on_batch(b.shape[0])
    nt, ns = torch.cat(nll_t), torch.cat(nll_s)
    n = nt.numel()
    return {
        "teacher": _summary(nt, bin_size),
        "student": _summary(ns, bin_size),
        "top1_agreement": agree / n,
        "kl": kl / n,
        "tokens": n,
        "blocks": int(blocks.shape[0]),
        "seq_len": int(blocks.shape[1]),
    }
