"""Sequence parallelism for whole models: split a batch's sequences over the ranks of a group, run the
linearized model on each rank's slice (LASP-2 inside the mixers, see `liger.distributed.lasp`),
gather outputs, and a next-token loss whose sum over the ranks is the loss of the whole sequences."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import config_of
from ..errors import ConfigError
from ..mixers import LigerAttention
from .context import sequence_parallel
from .softmax_layers import enable

Tensor = torch.Tensor


def split_lengths(total: int, parts: int) -> list[int]:
    """Contiguous slice lengths of a `total`-token sequence over `parts` ranks: the first `total % parts`
    ranks get one token more. Each rank needs at least one token."""
    if total < parts:
        raise ConfigError(f"a {total}-token sequence cannot be split over {parts} ranks (one token each at least)")
    base, extra = divmod(total, parts)
    return [base + (r < extra) for r in range(parts)]


def split_sequence(x: Tensor, lengths: list[int], rank: int, dim: int = 1) -> Tensor:
    """Rank `rank`'s slice of `x` along `dim` (a view)."""
    return x.narrow(dim, sum(lengths[:rank]), lengths[rank])


def check_sequence_parallel_model(model: nn.Module) -> None:
    """Raise ConfigError unless `model` is a linearized model (any mixer, with or without the window branch:
    LASP-2 covers them all) with no layer computing attention-transfer targets; route the layers kept as
    softmax attention, if any, through the sequence-parallel attention (`softmax_layers.enable`)."""
    cfg = config_of(model)
    layers = [m for m in model.modules() if isinstance(m, LigerAttention)]
    if cfg is None or not layers:
        raise ConfigError("sequence parallelism needs a linearized model (liger.linearize)")
    if any(m.transfer for m in layers):
        raise ConfigError("attention transfer (softmax targets) does not run under sequence parallelism")
    if cfg.softmax_layers or cfg.softmax_every:
        enable(model)


def sequence_parallel_forward(
    model: nn.Module,
    input_ids: Tensor,
    group=None,
    attention_mask: Tensor | None = None,
    **kwargs,
):
    """Run `model` on this rank's slice of `input_ids` (LongTensor [B, T], the whole sequences, the same on
    every rank of `group`) with global position ids; the mixers exchange states and window halos.

    Returns the model's output for the slice (logits [B, T_r, V]; `split_lengths(T, P)` gives T_r). Every
    rank of `group` must call it together. attention_mask: optional [B, T] padding mask (whole sequences)."""
    check_sequence_parallel_model(model)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    B, T = input_ids.shape
    lengths = split_lengths(T, world)
    start = sum(lengths[:rank])
    ids = split_sequence(input_ids, lengths, rank)
    positions = torch.arange(start, start + lengths[rank], device=input_ids.device)[None].expand(B, -1)
    valid = None
    if attention_mask is not None:
        kwargs["attention_mask"] = split_sequence(attention_mask, lengths, rank)
        valid = attention_mask.bool()
    with sequence_parallel(lengths, group, valid):
        return model(input_ids=ids, position_ids=positions, use_cache=False, **kwargs)


class SequenceParallelLoss:
    """Next-token cross-entropy of `seq_len`-token sequences split over the ranks of `group`.

    On each rank, returns its share: the summed cross-entropy of the targets its slice predicts (the target
    of a slice's last token is the next rank's first token) divided by all B * (seq_len - 1) targets, so the
    shares of the ranks add up to `next_token_loss` of the whole sequences, and so do their gradients
    (the mixers' collectives carry the cross-rank terms). `context()` re-enters the split for a backward
    that recomputes activations (gradient checkpointing)."""

    def __init__(self, seq_len: int, group=None) -> None:
        self.group, self.seq_len = group, seq_len
        self.lengths = split_lengths(seq_len, dist.get_world_size(group))

    def context(self):
        return sequence_parallel(self.lengths, self.group)

    def __call__(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        B, T = batch.shape
        if T != self.seq_len:
            raise ConfigError(f"batch of {T} tokens per sequence, the loss was built for {self.seq_len}")
        rank = dist.get_rank(self.group)
        start = sum(self.lengths[:rank])
        logits = sequence_parallel_forward(model, batch, self.group).logits
        targets = batch[:, start + 1 : start + self.lengths[rank] + 1]  # one fewer on the last rank
        logits = logits[:, : targets.shape[1]].float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        share = ce / (B * (T - 1))
        return share, {"ce": share.item()}

