"""The slow, obviously-correct float64 reference of the sparse cache (liger.ops.sparse), for the tests: the set
of each query by sorting all the tokens that have left its window, and the novelty scores token by token."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def naive_sparse_sets(score: Tensor, valid: Tensor, window: int, budget: int) -> list[list[list[list[int]]]]:
    """sets[b][h][t]: the positions of the tokens query t sees in its sparse set (key head h of sequence b),
    over one whole sequence: the `budget` highest-scored valid tokens at positions <= t - window, ties to the
    later token. score [B, T, Hk], valid bool [B, T]."""
    B, T, Hk = score.shape
    sets = []
    for b in range(B):
        per_head = []
        for h in range(Hk):
            rows = []
            for t in range(T):
                pool = [s for s in range(0, t - window + 1) if valid[b, s]]
                pool.sort(key=lambda s: (float(score[b, s, h]), s), reverse=True)
                rows.append(sorted(pool[:budget]))
            per_head.append(rows)
        sets.append(per_head)
    return sets


def naive_sparse_window_attention(q: Tensor, k: Tensor, v: Tensor, score: Tensor, window: int, budget: int,
                                  scale: float, valid: Tensor | None = None) -> Tensor:
    """One softmax per query over its window (positions t - window + 1 .. t, valid keys) and its sparse set
    (`naive_sparse_sets`), float64 [B, T, Hq, Dv]; q, k after RoPE, one whole sequence."""
    B, T, Hq, D = q.shape
    Hk = k.shape[2]
    G = Hq // Hk
    valid = torch.ones(B, T, dtype=torch.bool) if valid is None else valid.bool().cpu()
    sets = naive_sparse_sets(score.cpu(), valid, window, budget)
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    o = torch.zeros(B, T, Hq, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            win = [s for s in range(max(0, t - window + 1), t + 1) if valid[b, s]]
            for h in range(Hq):
                keys = win + sets[b][h // G][t]
                if not keys:
                    continue
                s = (k[b, keys, h // G] @ q[b, t, h]) * scale
                o[b, t, h] = torch.softmax(s, 0) @ v[b, keys, h // G]
    return o


def naive_novelty_scores(k: Tensor, v: Tensor, valid: Tensor | None = None) -> Tensor:
    """`novelty_scores` token by token in float64 from an empty memory, rounded to 1/256: [B, T, Hk] (-inf at
    padding)."""
    B, T, Hk, D = k.shape
    Dv = v.shape[-1]
    valid = torch.ones(B, T, dtype=torch.bool) if valid is None else valid.bool()
    out = torch.full((B, T, Hk), float("-inf"), dtype=torch.float64)
    for b in range(B):
        for h in range(Hk):
            S = torch.zeros(D, Dv, dtype=torch.float64)
            z = torch.zeros(D, dtype=torch.float64)
            for t in range(T):
                if not valid[b, t]:
                    continue
                phi = torch.softmax(k[b, t, h].double(), 0)
                vt = v[b, t, h].double()
                r = (phi @ S) / (phi @ z + 1e-6)
                err = (vt - r).pow(2).sum() / (vt.pow(2).sum() + 1e-6)
                out[b, t, h] = torch.round(err * 256) / 256
                S += torch.outer(phi, vt)
                z += phi
    return out
