"""The sparse cache's op (liger.ops.sparse) against its float64 reference: the sets, the attention over window
plus sparse set, the novelty scores, and prefill in pieces (any split, any block size) = one whole pass."""

import pytest
import torch

from liger.ops import window_attention_parts
from liger.ops.sparse import merge_parts, novelty_scores, sparse_attention_parts
from liger.ops.sparse_naive import naive_novelty_scores, naive_sparse_window_attention


def _inputs(B=2, T=37, Hq=4, Hk=2, D=8, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, h, D, generator=g) for h in (Hq, Hk, Hk))
    score = torch.rand(B, T, Hk, generator=g)
    valid = torch.ones(B, T, dtype=torch.bool)
    if pad:
        valid[1, :5] = False  # left padding
        valid[0, 11] = False  # a hole
    return q, k, v, score, valid


def _run(q, k, v, score, valid, W, M, splits, block=128):
    """Window + sparse attention over the splits of one sequence, carrying the caches: o [B, T, Hq, D]."""
    outs, past, memory, start = [], None, None, 0
    T = q.shape[1]
    bounds = [0, *splits, T]
    for a, b in zip(bounds[:-1], bounds[1:]):
        sl = slice(a, b)
        wpast = None if past is None else past[:3]
        nw = window_attention_parts(q[:, sl], k[:, sl], v[:, sl], W, scale=0.3, key_valid=valid[:, sl], past=wpast,
                                    with_max=True)
        s = sparse_attention_parts(q[:, sl], k[:, sl], v[:, sl], score[:, sl].masked_fill(~valid[:, sl, None], float("-inf")),
                                   W, M, scale=0.3, key_valid=valid[:, sl], past=past, memory=memory, start=start,
                                   block_size=block)
        num, den, _ = merge_parts(nw, s[:3])
        outs.append(num / den.clamp_min(1e-30))
        memory, ring_score = s[3], s[4]
        from liger.ops import roll_window
        ring = roll_window(None if past is None else past[:3], k[:, sl], v[:, sl], valid[:, sl], W)
        past = (*ring, ring_score)
        start = b
    return torch.cat(outs, 1)


@pytest.mark.parametrize("W,M", [(1, 3), (4, 2), (8, 5), (5, 40)])
def test_sparse_window_attention_matches_reference(W, M):
    q, k, v, score, valid = _inputs()
    ref = naive_sparse_window_attention(q, k, v, score.masked_fill(~valid[..., None], float("-inf")), W, M, 0.3, valid)
    for splits, block in [((), 128), ((), 4), ((10, 11, 12, 30), 3), (tuple(range(1, 37)), 128)]:
        o = _run(q, k, v, score, valid, W, M, splits, block)
        ok = valid[..., None, None].expand_as(o)  # padding queries' outputs are not defined by the reference
        torch.testing.assert_close(o[ok].double(), ref[ok], atol=1e-5, rtol=1e-5)


def test_sparse_ties_go_to_the_later_token():
    q, k, v, _, valid = _inputs(pad=False)
    score = torch.zeros(2, 37, 2)  # every score tied
    ref = naive_sparse_window_attention(q, k, v, score, 3, 4, 0.3, valid)
    o = _run(q, k, v, score, valid, 3, 4, (9, 20), 5)
    torch.testing.assert_close(o.double(), ref, atol=1e-5, rtol=1e-5)


def test_memory_is_bounded():
    q, k, v, score, valid = _inputs(T=200)
    s = sparse_attention_parts(q, k, v, score, 4, 6, scale=0.3, key_valid=valid)
    assert s[3].k.shape[1] == 6 and s[4].shape[1] == 3


def test_novelty_scores_match_reference_and_resume():
    _, k, v, _, valid = _inputs(T=70)
    ref = naive_novelty_scores(k, v, valid)
    score, _ = novelty_scores(k, v, valid)
    torch.testing.assert_close(score.double(), ref, atol=1e-4, rtol=1e-4)
    a, st = novelty_scores(k[:, :33], v[:, :33], valid[:, :33])
    b, st = novelty_scores(k[:, 33:34], v[:, 33:34], valid[:, 33:34], st)
    c, _ = novelty_scores(k[:, 34:], v[:, 34:], valid[:, 34:], st)
    torch.testing.assert_close(torch.cat([a, b, c], 1), score, atol=1e-5, rtol=1e-5)
    assert score[valid].isfinite().all() and (score[~valid] == float("-inf")).all()
