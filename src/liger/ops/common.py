"""What the ops share: the float32 wrapper, the input checks, cutting a time-first sequence into chunks and
back, within-chunk decay matrices for per-head (scalar) gates, the scan that carries a state from chunk to
chunk, the token-by-token loop of the decode paths, and the head expansion of the float64 references.

Chunked layout: [B, H, N, C, D] (N chunks of C tokens, zero-padded at the end), with query groups as a
separate axis [B, Hk, N, G, C, D] (query head h reads key/value head h // G).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def float32_op(fn):
    """Run an op with autocast disabled: it casts to float32 itself, and autocast would lower its matmuls."""

    @functools.wraps(fn)
    def wrapper(q, *args, **kwargs):
        with torch.autocast(q.device.type, enabled=False):
            return fn(q, *args, **kwargs)

    return wrapper


# Input checks


def check_qkv(q: Tensor, k: Tensor, v: Tensor, initial_state: Tensor | None = None) -> int:
    """Validate q [B, T, Hq, K], k [B, T, Hk, K], v [B, T, Hk, V] and, if given, a state [B, Hk, K, V];
    return the query-group size G = Hq // Hk."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D time-first tensors [B, T, H, D]")
    B, T, Hq, K = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, T, K) or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Hq % k.shape[2]:
        raise ValueError(f"q has {Hq} heads, not a multiple of k's {k.shape[2]}")
    check_shape("initial_state", initial_state, (B, k.shape[2], K, v.shape[3]))
    return Hq // k.shape[2]


def check_shape(name: str, x: Tensor | None, shape: tuple[int, ...]) -> None:
    """Raise a ValueError naming `name` unless x is None or has exactly `shape`."""
    if x is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def prepare(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None, initial_state: Tensor | None
) -> tuple[int, float, Tensor]:
    """Validate q, k, v and initial_state (`check_qkv`); return G, the scale (K ** -0.5 unless given) and the
    float32 starting state [B, Hk, K, V]."""
    G = check_qkv(q, k, v, initial_state)
    B, _, Hk, K = k.shape
    scale = K**-0.5 if scale is None else scale
    return G, scale, initial(initial_state, (B, Hk, K, v.shape[3]), q)


def initial(state: Tensor | None, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The float32 starting state: `state` in float32, or zeros of `shape` on `like`'s device."""
    if state is None:
        return like.new_zeros(shape, dtype=torch.float32)
    return state.float()


# Input values: the contract every recurrence checks (`check_values`), and T = 0 (`empty_result`)

NAN = float("nan")


class NonFinite:
    """What `check_values` returns when a checked input holds NaN or inf: `inputs`, the checked inputs in the
    order given (seq, gates, beta) with every non-finite value replaced by 0, and `poison`, which sets to NaN
    the outputs and final states those values reach in the recurrence (none before them in time)."""

    def __init__(self, inputs: list[Tensor], out_bad: Tensor, state_bad: Tensor | None) -> None:
        self.inputs, self.out_bad, self.state_bad = inputs, out_bad, state_bad

    def poison(self, o: Tensor, state=None):
        """o [B, T, H, D] with NaN where reached; the final state (a tensor [B, Hk, ...], a tuple of them, or
        None) with NaN for the heads reached."""
        o = o.masked_fill(self.out_bad.unsqueeze(-1), NAN)
        if state is None:
            return o, None
        fill = lambda s: s.masked_fill(self.state_bad.view(*self.state_bad.shape, *[1] * (s.dim() - 2)), NAN)
        return o, (tuple(fill(s) for s in state) if isinstance(state, tuple) else fill(state))


def zero_non_finite(x: Tensor) -> Tensor:
    """x with NaN and +-inf replaced by 0 (differentiable where finite)."""
    return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _raise_bad(op: str, name: str, x: Tensor, bad: Tensor, rule: str) -> None:
    idx = [i.item() for i in torch.unravel_index(bad.flatten().nonzero()[0, 0], x.shape)]
    raise ValueError(f"{op}: {name} must be {rule}, got {x[tuple(idx)].item()} at index {idx}")


def check_values(
    op: str, q: Tensor, seq: dict[str, Tensor], gates: dict[str, Tensor] | None = None, beta: Tensor | None = None
) -> NonFinite | None:
    """The value contract of the recurrences, checked with one reduction per checked input and one host sync.

    seq: the inputs [B, T, Hk, ...] whose non-finite values the chunked form would spread to a chunk's earlier
    rows (through 0 * NaN in its matmuls, or through the decay at the chunk's midpoint); gates: log decays
    [B, T, Hk, ...], which must be <= 0; beta: the delta rule's write strengths [B, T, Hk], in [0, 2]. q only
    gives the shapes [B, T, Hq]. Inputs left out (q, and keys where the op's masks hold) need no check: in
    every form of the ops a NaN/inf there reaches only outputs at or after its position (q_t: o_t alone), as
    does a non-finite initial state (every output).

    Raises ValueError (naming the op, the input, the first bad value and its index) for a gate > 0 (+inf
    included) or a beta outside [0, 2] (+-inf included). Returns None when every checked value is finite (the
    common case: the op then runs exactly as without the check). Otherwise (NaN, +-inf in seq, -inf in a gate)
    returns a `NonFinite`: the op runs on those inputs with the bad values zeroed, and `poison` sets to NaN
    every output of the head from the first bad position on and its final state, as the token-by-token
    recurrence does; no output before a non-finite input depends on it (a chunk's earlier rows included).
    """
    gates = gates or {}
    ranged = [*gates.values(), *([] if beta is None else [beta])]
    with torch.no_grad():  # a gate's sum finds NaN and +-inf, its max the gates > 0 (faster than aminmax)
        stats = [x.sum() for x in (*seq.values(), *gates.values())] + [x.amax() for x in gates.values()]
        stats += [] if beta is None else list(torch.aminmax(beta))
        vals = torch.stack([x.float() for x in stats]).tolist()
    n = len(seq) + len(gates)
    for (name, g), hi in zip(gates.items(), vals[n : n + len(gates)]):
        if hi > 0:  # (NaN compares False: found below, once the NaNs are set aside)
            _raise_bad(op, name, g, g > 0, "<= 0 (a natural-log decay)")
    if beta is not None and (vals[-2] < 0 or vals[-1] > 2):
        _raise_bad(op, "beta", beta, (beta < 0) | (beta > 2), "in [0, 2]")
    if all(map(math.isfinite, vals)):
        return None
    for name, g in gates.items():
        if (g > 0).any():  # +inf, or a finite gate > 0 beside a NaN
            _raise_bad(op, name, g, g > 0, "<= 0 (a natural-log decay)")
    if beta is not None and (out := beta.isinf() | (beta < 0) | (beta > 2)).any():
        _raise_bad(op, "beta", beta, out, "in [0, 2]")
    named = [*seq.values(), *ranged]
    B, T, Hq = q.shape[:3]
    Hk = named[0].shape[2]
    with torch.no_grad():
        bad = torch.zeros(B, T, Hk, dtype=torch.bool, device=q.device)
        for x in named:
            bad |= ~torch.isfinite(x).reshape(B, T, Hk, -1).all(-1)
        reach = bad.cumsum(1) > 0  # [B, T, Hk]: at or after a bad position
    return NonFinite([zero_non_finite(x) for x in named], reach.repeat_interleave(Hq // Hk, 2), reach[:, -1])


def empty_result(o_shape: tuple[int, ...], like: Tensor, state, state_shapes, output_final_state: bool):
    """The result of a recurrence on T = 0 tokens: an empty o of `o_shape` in like's dtype, and (if asked) the
    final state, which is the initial state (a float32 copy) or zeros of `state_shapes` (a shape, or a tuple
    of shapes for a pair of states)."""
    o = like.new_empty(o_shape)
    if not output_final_state:
        return o, None
    if isinstance(state_shapes[0], tuple):
        given = (None,) * len(state_shapes) if state is None else state  # (a pair may hold a None)
        return o, tuple(initial(s, shape, like).clone() for s, shape in zip(given, state_shapes))
    return o, initial(state, state_shapes, like).clone()


# Chunks


def chunk_len(T: int, chunk_size: int) -> int:
    """The chunk length used for T tokens: `chunk_size`, or a smaller power of two (>= 16) for short inputs."""
    return min(chunk_size, max(16, 1 << (T - 1).bit_length()))


def chunk_view(x: Tensor, C: int, groups: int | None = None) -> Tensor:
    """[B, T, H, *D] -> [B, H, N, C, *D] zero-padded to N * C tokens: a permuted view (of the padded copy when
    T is not a multiple of C). With `groups` = G, x has H = Hk * G heads and the result is [B, Hk, N, G, C, *D]."""
    B, T, H = x.shape[:3]
    rest = x.shape[3:]
    pad = (-T) % C
    if pad:
        x = F.pad(x, (0, 0) * len(rest) + (0, 0, 0, pad))
    N = (T + pad) // C
    if groups is None:
        return x.view(B, N, C, H, *rest).permute(0, 3, 1, 2, *range(4, 4 + len(rest)))
    return x.view(B, N, C, H // groups, groups, *rest).permute(0, 3, 1, 4, 2, *range(5, 5 + len(rest)))


def to_chunks(x: Tensor, C: int, dtype: torch.dtype = torch.float32, groups: int | None = None) -> Tensor:
    """`chunk_view` as a contiguous tensor in `dtype`."""
    return contiguous(chunk_view(x, C, groups), dtype)


def contiguous(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous copy of a (permuted) view in `dtype`, in one pass."""
    return torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x)


def from_chunks(o: Tensor, T: int) -> Tensor:
    """[B, Hk, N, G, C, V] -> [B, T, Hk * G, V] (the inverse of `to_chunks` with groups, padding dropped)."""
    B, Hk, N, G, C, V = o.shape
    return o.permute(0, 2, 4, 1, 3, 5).reshape(B, N * C, Hk * G, V)[:, :T]


def causal_mask(C: int, device: torch.device, diagonal: int = 0) -> Tensor:
    """Bool [C, C], True where key s may reach query t: s <= t + diagonal."""
    return torch.ones(C, C, dtype=torch.bool, device=device).tril(diagonal)


def scalar_decays(g: Tensor) -> tuple[Tensor, Tensor]:
    """Within-chunk decays of per-head gates g [..., C] (natural log, <= 0).

    Returns b, the cumulative log decay float64 [..., C], and D float32 [..., C, C] with
    D[t, s] = exp(b_t - b_s) for s <= t and 0 above the diagonal. Exponents are differences of float64
    cumulative sums, all <= 0, so any g is safe: nothing overflows and very negative gates underflow to 0.
    """
    b = g.double().cumsum(-1)
    diff = b.unsqueeze(-1) - b.unsqueeze(-2)
    diff = diff.masked_fill(~causal_mask(g.shape[-1], g.device), float("-inf"))
    return b, diff.float().exp()


def scan_chunks(U: Tensor, decay: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """S_{n+1} = decay_n * S_n + U_n over the chunks n (a Python loop over chunks, not tokens).

    U: [B, H, N, K, V]; decay: [B, H, N, *] broadcastable to U; S: the state entering chunk 0 [B, H, K, V].
    Returns the states entering each chunk [B, H, N, K, V] and the final state [B, H, K, V].
    The chunks are taken with `unbind`, not indexing: the backward of N indexings writes N zero-filled
    copies of U (O(N^2) memory traffic), that of one unbind stacks the N gradients once."""
    entering = []
    for U_n, decay_n in zip(U.unbind(2), decay.unbind(2)):
        entering.append(S)
        S = decay_n * S + U_n
    return torch.stack(entering, 2), S


# Token by token


def recurrent_outputs(q: Tensor, S: Tensor, step: Callable[[Tensor, int], Tensor]) -> tuple[Tensor, Tensor]:
    """The token-by-token loop of the decode paths: S_t = step(S_{t-1}, t), o_t = q_t S_t (unscaled).

    q: float32 [B, T, Hq, K]; S: float32 [B, Hk, K, V] (query head h reads state h // G).
    Returns o float32 [B, T, Hq, V] and the final state."""
    B, T, Hq, K = q.shape
    Hk = S.shape[1]
    qg = q.view(B, T, Hk, Hq // Hk, K)
    outs = []
    for t in range(T):
        S = step(S, t)
        outs.append(torch.matmul(qg[:, t], S))  # [B, Hk, G, K] @ [B, Hk, K, V]
    return torch.stack(outs, 1).reshape(B, T, Hq, S.shape[-1]), S


# For the float64 references (the *_naive modules)


def per_query_head(q: Tensor, *kv: Tensor) -> tuple[int, list[Tensor]]:
    """G = Hq // Hk and [q, *kv] in float64, the key-side heads repeated G times (query head h <- h // G)."""
    G = q.shape[2] // kv[0].shape[2]
    return G, [q.double()] + [x.double().repeat_interleave(G, dim=2) for x in kv]


def naive_start(state: Tensor | None, G: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An initial state [B, Hk, ...] repeated for the query heads [B, Hq, ...] in float64, or zeros of `shape`."""
    return like.new_zeros(shape, dtype=torch.float64) if state is None else state.double().repeat_interleave(G, 1)
