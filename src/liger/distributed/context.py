"""The sequence split in force: inside `with sequence_parallel(lengths, group):` the linearized mixers treat
their inputs as this rank's slice of sequences split over the ranks of `group`, and call the LASP-2 ops
(`liger.distributed.lasp`) through the `SequenceParallel` object that `current()` returns.

The split is a module-level stack, not an argument, so that it is also seen by the autograd threads that
recompute activations under gradient checkpointing (keep the backward inside the `with` block).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .collectives import preceding_tokens
from .lasp import window_halo

Tensor = torch.Tensor


@dataclass(frozen=True)
class SequenceParallel:
    """The sequence split in force: `lengths[r]` tokens of every sequence on rank r of `group`."""

    group: object
    rank: int
    world: int
    lengths: tuple[int, ...]
    valid: Tensor | None = None  # bool [B, T]: the whole sequences' padding mask (True = a real token), or None

    @property
    def start(self) -> int:
        """Global position of this rank's first token."""
        return sum(self.lengths[: self.rank])

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def check_length(self, T: int) -> None:
        if T != self.lengths[self.rank]:
            raise ConfigError(
                f"rank {self.rank} got {T} tokens but the sequence-parallel split gives it "
                f"{self.lengths[self.rank]} (lengths {list(self.lengths)}); feed each rank its own slice"
            )

    def _no_cache(self, T: int, cached=None, want_state: bool = False) -> None:
        """Check a T-token call: this rank's slice, no cached state or window passed in, none asked back."""
        if cached is not None or want_state:
            raise ConfigError("sequence parallelism runs without a generation cache: call the model with "
                              "use_cache=False")
        self.check_length(T)

    def run(self, op, q: Tensor, *inputs: Tensor, scale: float | None = None, initial_state=None,
            output_final_state: bool = False):
        """A LASP-2 op of liger.distributed.lasp (`chunk_gla_sp`, ...) on this rank's slice, as the mixers call
        their chunked op (no generation cache under sequence parallelism)."""
        self._no_cache(q.shape[1], initial_state, output_final_state)
        return op(q, *inputs, scale=scale, group=self.group)

    def halo(self, k, v, key_valid, window, past=None):
        """`past` for the window branch: the `window - 1` keys/values before this rank's slice."""
        self._no_cache(k.shape[1], past)
        return window_halo(k, v, key_valid, window, self.lengths, self.group)

    def preceding(self, x: Tensor, n: int) -> Tensor:
        """The n tokens before this rank's slice of x [B, T_r, F] (float32 [B, n, F]; see `preceding_tokens`),
        e.g. a short convolution's inputs from the previous rank."""
        self.check_length(x.shape[1])
        return preceding_tokens(x, n, self.lengths, self.group)


_ACTIVE: list[SequenceParallel] = []


def current() -> SequenceParallel | None:
    """The sequence split the mixers must follow now, or None (ordinary single-process computation)."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def sequence_parallel(lengths: Sequence[int], group=None, valid: Tensor | None = None) -> Iterator[SequenceParallel]:
    """Within this block, the linearized mixers treat their inputs as this rank's slice of sequences split
    over `group` (default: the whole world) with `lengths[r]` tokens on rank r (every rank >= 1 token).

    The caller gives each rank its slice and global position ids (slice start + arange). Keep the backward
    inside the block when activations are recomputed (gradient checkpointing). valid: the whole sequences'
    padding mask (bool [B, sum(lengths)]), needed by layers kept as softmax attention when there is padding."""
    if not dist.is_available() or not dist.is_initialized():
        raise ConfigError("sequence parallelism needs an initialised torch.distributed process group "
                          "(launch with torchrun; see docs/SCALING.md)")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    lengths = tuple(int(n) for n in lengths)
    if len(lengths) != world or min(lengths) < 1:
        raise ConfigError(f"sequence-parallel lengths {list(lengths)} must give each of the {world} ranks "
                          "at least one token")
    if valid is not None and valid.shape[-1] != sum(lengths):
        raise ConfigError(f"the padding mask covers {valid.shape[-1]} tokens, the split {sum(lengths)}")
    _ACTIVE.append(SequenceParallel(group, rank, world, lengths, None if valid is None else valid.bool()))
    try:
        yield _ACTIVE[-1]
    finally:
        _ACTIVE.pop()
