"""Language modelling on held-out text: perplexity of each model and how closely the student follows the
teacher, token by token, on the same packed blocks.

Log-softmaxes are taken in float32 over chunks of `CHUNK` positions of one sequence at a time, so besides
the models' own logits only a few [CHUNK, V] tensors are ever alive (never a whole batch's log-probabilities).
Models are called as `model(input_ids=ids, use_cache=False)`; the inputs go to the device of the (student)
model's first parameter, the per-token figures come back to the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

Tensor = torch.Tensor
CHUNK = 256  # positions per float32 log-softmax


def device_of(model: nn.Module) -> torch.device:
    """The device of `model`'s first parameter (the CPU for a module without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def logits_of(model: nn.Module, ids: Tensor) -> Tensor:
    """The logits [B, T, V] of `model` on `ids` [B, T] (already on the model's device)."""
    return model(input_ids=ids, use_cache=False).logits


def token_nll(logits: Tensor, ids: Tensor, chunk: int | None = None) -> Tensor:
    """Float32 NLL [B, T - 1] (on the CPU) of tokens 1..T-1 of `ids` under `logits` [B, T, V]; `chunk`
    positions per log-softmax (default CHUNK)."""
    chunk = chunk or CHUNK
    B, T = ids.shape
    out = torch.empty(B, max(T - 1, 0))
    for b in range(B):
        for s in range(0, T - 1, chunk):
            e = min(s + chunk, T - 1)
            lp = torch.log_softmax(logits[b, s:e].float(), dim=-1)
            out[b, s:e] = -lp.gather(-1, ids[b, s + 1 : e + 1, None].to(lp.device)).squeeze(-1).cpu()
    return out


def token_stats(lt_logits: Tensor, ls_logits: Tensor, ids: Tensor, chunk: int | None = None) -> dict[str, Tensor]:
    """Per predicted token (tokens 1..T-1 of `ids` [B, T]), from the teacher's and the student's logits
    [B, T, V]: {"nll_t", "nll_s", "kl", "agree"}, each [B, T - 1] on the CPU (float32; agree bool):
    NLL of each model, KL(teacher || student) = sum_v p_t(v) (log p_t(v) - log p_s(v)) in nats, and whether
    both argmaxes agree. `chunk` positions per log-softmax (default CHUNK)."""
    chunk = chunk or CHUNK
    B, T = ids.shape
    n = max(T - 1, 0)
    nll_t, nll_s, kl = torch.empty(B, n), torch.empty(B, n), torch.empty(B, n)
    agree = torch.empty(B, n, dtype=torch.bool)
    for b in range(B):
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            lt = torch.log_softmax(lt_logits[b, s:e].float(), dim=-1)
            ls = torch.log_softmax(ls_logits[b, s:e].to(lt.device).float(), dim=-1)
            target = ids[b, s + 1 : e + 1, None].to(lt.device)
            nll_t[b, s:e] = -lt.gather(-1, target).squeeze(-1).cpu()
            nll_s[b, s:e] = -ls.gather(-1, target).squeeze(-1).cpu()
            agree[b, s:e] = (lt.argmax(-1) == ls.argmax(-1)).cpu()
            kl[b, s:e] = torch.nn.functional.kl_div(ls, lt, reduction="none", log_target=True).sum(-1).cpu()
            del lt, ls
    return {"nll_t": nll_t, "nll_s": nll_s, "kl": kl, "agree": agree}


def _summary(nll: Tensor, bin_size: int) -> dict:
    """Perplexity of all predicted tokens, and the mean NLL by position in bins of `bin_size` tokens."""
    by_pos = nll.mean(0)
    bins = [
        {"start": s + 1, "end": min(s + bin_size, by_pos.numel()), "nll": float(by_pos[s : s + bin_size].mean())}
        for s in range(0, by_pos.numel(), bin_size)
    ]
    mean = float(nll.double().mean())
    return {"nll": mean, "perplexity": math.exp(mean), "nll_by_position": bins}


@torch.no_grad()
def perplexity(model: nn.Module, blocks: Tensor, batch_size: int = 1, bin_size: int = 32) -> dict:
    """Held-out perplexity of `model` on `blocks` (LongTensor [N, T], each row a packed block; the first token
    of a block is context only, so N * (T - 1) tokens are predicted). Returns
    {"nll", "perplexity", "tokens", "nll_by_position": [{"start", "end", "nll"}]} (NLL in nats/token)."""
    device = device_of(model)
    nll = torch.cat([token_nll(logits_of(model, b.to(device)), b) for b in blocks.split(batch_size)])
    return {**_summary(nll, bin_size), "tokens": nll.numel()}


def check_vocab(student: nn.Module, teacher: nn.Module) -> None:
    """ValueError unless both models' configs have the same vocabulary size."""
    if student.config.get_text_config().vocab_size != teacher.config.get_text_config().vocab_size:
        raise ValueError("teacher and student must share a vocabulary")


@torch.no_grad()
def compare_lm(
    student: nn.Module,
    teacher: nn.Module,
    blocks: Tensor,
    batch_size: int = 1,
    bin_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Both models on the same blocks (LongTensor [N, T], shared tokenizer), batch by batch (one batch's
    logits of each model alive at a time; the teacher may wrap the student). Returns
    {"teacher": perplexity summary, "student": perplexity summary,
     "top1_agreement": fraction of predicted positions where both argmaxes are equal,
     "kl": mean over positions of KL(teacher || student) = sum_v p_t(v) (log p_t(v) - log p_s(v)) in nats,
     "tokens": N * (T - 1), "blocks": N, "seq_len": T}."""
    check_vocab(student, teacher)
    device = device_of(student)
    nll_t, nll_s, agree, kl = [], [], 0, 0.0
    for b in blocks.split(batch_size):
        ids = b.to(device)
        lt = logits_of(teacher, ids)
        ls = logits_of(student, ids)
        st = token_stats(lt, ls, b)
        del lt, ls
        nll_t.append(st["nll_t"])
        nll_s.append(st["nll_s"])
        agree += int(st["agree"].sum())
        kl += float(st["kl"].double().sum())
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
