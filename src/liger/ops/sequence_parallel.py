"""LASP-2 sequence parallelism for the gated linear mixers, on plain torch.distributed (gloo or nccl).

Each rank of a process group holds one contiguous slice of every sequence, rank 0 first: time-first
[B, T_r, H, D], with slices that may differ in length (`lengths`, known to every rank). B and the head
sizes are the same on every rank.

GLA (S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t) is linear in its initial state, so
the state entering rank r's slice is a fixed-size function of the slices before it::

    S_in(r) = sum_{j<r} diag(exp(D_{j+1} + ... + D_{r-1})) S_j  +  diag(exp(D_0 + ... + D_{r-1})) S_0

with S_j rank j's final state from a zero initial state, D_j = sum_t g_t over its slice (float32
[B, Hk, K]) and S_0 an optional initial state of the whole sequence. `chunk_gla_sp`, on every rank:

1. runs `chunk_gla` on its slice from a zero state: the local output and the local state S_r;
2. all-gathers (S_r, D_r) packed in one float32 tensor [B, Hk, K, V + 1]: ONE collective per layer whose
   size does not depend on the sequence length;
3. combines the earlier ranks' states into S_in(r) (every exponent above is <= 0: no overflow);
4. adds that state's contribution to its outputs: o_t += scale * (q_t * exp(b_t)) S_in(r), b_t the
   cumulative log decay from the slice start to t. This correction (one [T_r, K] x [K, V] matmul per head)
   is preferred to a second `chunk_gla` pass with S_in(r) as initial state: same result, half the work.

The sliding-window branch needs, on rank r, the `window - 1` (RoPE'd) keys and values that precede its
slice: `window_halo` all-gathers every rank's last `window - 1` keys, values and validity flags (fixed size)
and assembles the halo from the earlier ranks (several of them when slices are shorter than the window); it
is passed to `window_attention` as `past`.

Both collectives are differentiable (`all_gather_differentiable`: all-gather forward, reduce-scatter
backward), and every rank builds the same autograd graph (rank 0 multiplies the gathered tensors by zero
weights rather than skipping them), so the backward collectives match across ranks.

Inside a model, `sequence_parallel(lengths, group)` makes the mixers use these ops: `liger.mixers.cores`
asks `current()` (a module global, so it is also seen by the autograd threads that recompute activations
under gradient checkpointing: keep the backward inside the `with` block). The caller feeds each rank its
slice with global position ids (`liger.distributed.sequence_parallel_forward` does all of this).
Supported: the Liger gated mixers (gla, hgrn2, simple_gla, retention) with or without the window branch, no
cache. Not supported: layers kept as softmax attention, the lolcats mixer, generation caches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .gla import GATE_FLOOR, chunk_gla, float32_op

Tensor = torch.Tensor

# torch >= 2.12 renamed all_gather_into_tensor / reduce_scatter_tensor (the old names warn).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _AllGather(torch.autograd.Function):
    """[*shape] on each of P ranks -> [P, *shape] on every rank; backward sums the P ranks' gradients of
    slot r into rank r's input (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        flat = x.contiguous().view(-1)
        out = flat.new_empty(world * flat.numel())
        _all_gather_single(out, flat, group=group)
        return out.view(world, *x.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        flat = grad.contiguous().view(-1)
        out = flat.new_empty(flat.numel() // grad.shape[0])
        _reduce_scatter_single(out, flat, op=dist.ReduceOp.SUM, group=ctx.group)
        return out.view(grad.shape[1:]), None


def all_gather_differentiable(x: Tensor, group=None) -> Tensor:
    """All-gather of a same-shaped tensor from every rank of `group`: [P, *x.shape], rank order.

    Differentiable (backward: reduce-scatter of the gradients, so d(loss on all ranks)/dx is exact). Works
    over gloo and nccl. Every rank must call it, in the same order as the others, forward and backward."""
    return _AllGather.apply(x, group)


def _combine(S: Tensor, D: Tensor, upto: int, S0: Tensor | None) -> Tensor:
    """The state after the slices of ranks 0..upto-1: sum_{j<upto} exp(D_{j+1} + .. + D_{upto-1}) S_j (+ the
    decayed S0). S [P, B, Hk, K, V], D [P, B, Hk, K] float32. Zero weights (not skipped terms) for j >= upto,
    so every rank's graph holds the gathered tensors."""
    P = S.shape[0]
    before = (torch.arange(P, device=S.device) < upto).to(D.dtype)[:, None, None, None]  # [P, 1, 1, 1]
    Dm = D * before
    after_j = Dm.flip(0).cumsum(0).flip(0) - Dm  # D_{j+1} + ... + D_{upto-1}: <= 0
    S_in = (torch.exp(after_j) * before).unsqueeze(-1).mul(S).sum(0)
    if S0 is not None:
        S_in = S_in + torch.exp(Dm.sum(0)).unsqueeze(-1) * S0.float()
    return S_in


@float32_op
def chunk_gla_sp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    group=None,
) -> tuple[Tensor, Tensor | None]:
    """`chunk_gla` of a sequence split over the ranks of `group` (LASP-2, see the module docstring).

    q [B, T_r, Hq, K], k [B, T_r, Hk, K], v [B, T_r, Hk, V], g [B, T_r, Hk, K] (log decay <= 0): this rank's
    slice (T_r >= 1; slices may differ in length). initial_state: float32 [B, Hk, K, V], the state before the
    whole sequence (the same on every rank), or None. Returns this rank's outputs [B, T_r, Hq, V] (v's dtype)
    and, if asked, the final state of the whole sequence (float32 [B, Hk, K, V], on every rank).
    One all-gather of B * Hk * K * (V + 1) float32 values per call."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    B, T, Hq, K = q.shape
    Hk, V = k.shape[2], v.shape[-1]
    G = Hq // Hk
    scale = K**-0.5 if scale is None else scale
    if T == 0:
        raise ValueError("every rank needs at least one token of the sequence")
    o, S_local = chunk_gla(q, k, v, g, scale=scale, output_final_state=True)
    # chunk_gla floors the per-step log decay at -GATE_FLOOR (a change below e^-21); do the same here.
    b = g.float().clamp(min=-GATE_FLOOR).cumsum(1)  # [B, T, Hk, K]
    packed = torch.cat([S_local.float(), b[:, -1, :, :, None]], -1)  # [B, Hk, K, V + 1]
    gathered = all_gather_differentiable(packed, group)  # [P, B, Hk, K, V + 1]
    S_all, D_all = gathered[..., :V], gathered[..., V]
    S_in = _combine(S_all, D_all, rank, initial_state)
    qd = q.float().view(B, T, Hk, G, K) * b.exp().unsqueeze(3)  # q_t exp(b_t)
    o = o.float() + scale * torch.einsum("bthgk,bhkv->bthgv", qd, S_in).reshape(B, T, Hq, V)
    final = _combine(S_all, D_all, world, initial_state) if output_final_state else None
    return o.to(v.dtype), final


def window_halo(
    k: Tensor,
    v: Tensor,
    key_valid: Tensor | None,
    window: int,
    lengths: Sequence[int],
    group=None,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """The `window - 1` keys, values and validity flags that precede this rank's slice, as `past` for
    `window_attention`: (k [B, L, Hk, Dk], v [B, L, Hk, Dv] in float32, valid bool [B, L]), L = window - 1
    (invalid zeros where the sequence has fewer tokens before the slice); None when window <= 1.

    k [B, T_r, Hk, Dk] (after RoPE, at global positions), v [B, T_r, Hk, Dv], key_valid bool [B, T_r] or
    None; lengths: every rank's slice length. One all-gather of B * L * Hk * (Dk + Dv + 1) float32 values;
    differentiable with respect to k and v."""
    L = window - 1
    if L <= 0:
        return None
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    B, T, Hk, Dk = k.shape
    Dv = v.shape[-1]
    valid = torch.ones(B, T, dtype=torch.bool, device=k.device) if key_valid is None else key_valid.bool()
    flag = valid.float()[:, :, None, None].expand(B, T, Hk, 1)
    mine = torch.cat([k.float(), v.float(), flag], -1)[:, -L:]  # this rank's last min(T, L) tokens
    mine = torch.nn.functional.pad(mine, (0, 0, 0, 0, L - mine.shape[1], 0))  # left-padded to L
    gathered = all_gather_differentiable(mine, group)  # [P, B, L, Hk, Dk + Dv + 1]
    flat = gathered.permute(1, 0, 2, 3, 4).reshape(B, world * L, Hk, Dk + Dv + 1)
    # Positions (in `flat`) of the real tokens of ranks 0..rank-1, in sequence order; keep the last L.
    idx = [j * L + i for j in range(rank) for i in range(L - min(lengths[j], L), L)][-L:]
    idx = [-1] * (L - len(idx)) + idx
    index = torch.tensor(idx, device=k.device)
    halo = flat.index_select(1, index.clamp(min=0))  # rank 0: all slots invalid, still from `gathered`
    present = (index >= 0)[None, :]
    halo_valid = (halo[:, :, 0, -1] > 0.5) & present
    halo = halo * present[:, :, None, None].to(halo.dtype)
    return halo[..., :Dk], halo[..., Dk : Dk + Dv], halo_valid


@dataclass(frozen=True)
class SequenceParallel:
    """The sequence split in force: `lengths[r]` tokens of every sequence on rank r of `group`."""

    group: object
    rank: int
    world: int
    lengths: tuple[int, ...]

    @property
    def start(self) -> int:
        """Global position of this rank's first token."""
        return sum(self.lengths[: self.rank])

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def _check_length(self, T: int) -> None:
        if T != self.lengths[self.rank]:
            raise ConfigError(
                f"rank {self.rank} got {T} tokens but the sequence-parallel split gives it "
                f"{self.lengths[self.rank]} (lengths {list(self.lengths)}); feed each rank its own slice"
            )

    def chunk_gla(self, q, k, v, g, scale=None, initial_state=None, output_final_state=False):
        """The mixers' GLA call under sequence parallelism (no generation cache)."""
        if output_final_state or initial_state is not None:
            raise ConfigError("sequence parallelism runs without a generation cache: call the model with "
                              "use_cache=False")
        self._check_length(q.shape[1])
        return chunk_gla_sp(q, k, v, g, scale=scale, group=self.group)

    def halo(self, k, v, key_valid, window, past=None):
        """`past` for the window branch: the `window - 1` keys/values before this rank's slice."""
        if past is not None:
            raise ConfigError("sequence parallelism runs without a generation cache: call the model with "
                              "use_cache=False")
        self._check_length(k.shape[1])
        return window_halo(k, v, key_valid, window, self.lengths, self.group)


_ACTIVE: list[SequenceParallel] = []


def current() -> SequenceParallel | None:
    """The sequence split the mixers must follow now, or None (ordinary single-process computation)."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def sequence_parallel(lengths: Sequence[int], group=None) -> Iterator[SequenceParallel]:
    """Within this block, the linearized mixers treat their inputs as this rank's slice of sequences split
    over `group` (default: the whole world) with `lengths[r]` tokens on rank r (every rank >= 1 token).

    The caller gives each rank its slice and global position ids (slice start + arange). Keep the backward
    inside the block when activations are recomputed (gradient checkpointing)."""
    if not dist.is_available() or not dist.is_initialized():
        raise ConfigError("sequence parallelism needs an initialised torch.distributed process group "
                          "(launch with torchrun; see docs/SCALING.md)")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    lengths = tuple(int(n) for n in lengths)
    if len(lengths) != world or min(lengths) < 1:
        raise ConfigError(f"sequence-parallel lengths {list(lengths)} must give each of the {world} ranks "
                          "at least one token")
    _ACTIVE.append(SequenceParallel(group, rank, world, lengths))
    try:
        yield _ACTIVE[-1]
    finally:
        _ACTIVE.pop()
