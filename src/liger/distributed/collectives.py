"""Differentiable collectives for sequence parallelism (torch.distributed, gloo or nccl).

Every function here is a collective: every rank of the group calls it, in the same order, forward and
backward. Used by the LASP-2 ops (`liger.distributed.lasp`) and the layers kept as softmax attention
(`liger.distributed.softmax_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import ConfigError

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



def preceding_tokens(x: Tensor, n: int, lengths: Sequence[int], group=None) -> Tensor:
    """The `n` tokens of the whole sequence just before this rank's slice: float32 [B, n, F] from this
    rank's x [B, T_r, F] (zeros where the sequence has fewer than n tokens before the slice; from several
    earlier ranks when their slices are short). One all-gather of B * n * F values; differentiable."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    B, T, F = x.shape
    mine = x.float()[:, -n:]  # this rank's last min(T, n) tokens
    mine = torch.nn.functional.pad(mine, (0, 0, n - mine.shape[1], 0))  # left-padded to n
    gathered = all_gather_differentiable(mine, group)  # [P, B, n, F]
    flat = gathered.permute(1, 0, 2, 3).reshape(B, world * n, F)
    # Positions (in `flat`) of the real tokens of ranks 0..rank-1, in sequence order; keep the last n.
    idx = [j * n + i for j in range(rank) for i in range(n - min(lengths[j], n), n)][-n:]
    idx = [-1] * (n - len(idx)) + idx
    index = torch.tensor(idx, device=x.device)
    out = flat.index_select(1, index.clamp(min=0))  # rank 0: all slots absent, still from `gathered`
    return out * (index >= 0)[None, :, None].to(out.dtype)



def gather_sequence(x: Tensor, lengths: list[int], group=None, dim: int = 1) -> Tensor:
    """The whole sequence on every rank from the slices `x` (this rank's, `lengths[rank]` long along `dim`);
    differentiable. Slices are padded to the longest for the all-gather, then cut."""
    world = dist.get_world_size(group)
    if len(lengths) != world or x.shape[dim] != lengths[dist.get_rank(group)]:
        raise ConfigError(f"slice of length {x.shape[dim]} does not match the split {lengths}")
    longest = max(lengths)
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, longest - x.shape[dim]]
    gathered = all_gather_differentiable(F.pad(x, pad), group)  # [P, ...]
    return torch.cat([gathered[j].narrow(dim, 0, lengths[j]) for j in range(world)], dim)
