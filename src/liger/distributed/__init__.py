"""Multi-process training and sequence parallelism on torch.distributed (gloo on CPU, nccl on GPU).

- `init_distributed` / `ParallelContext`: the process group torchrun or accelerate launch describe, a
  timeout on the rendezvous and every collective, failures as `DistributedError`.
- `split_lengths`, `split_sequence`, `gather_sequence`, `sequence_parallel_forward`,
  `SequenceParallelLoss`: LASP-2 sequence parallelism for linearized models (the ops are in
  `liger.ops.sequence_parallel`; layers kept as softmax attention in `softmax_layers`). See docs/SCALING.md.
"""

from ..ops.sequence_parallel import all_gather_differentiable, chunk_gla_sp, sequence_parallel, window_halo
from .runtime import DistributedError, ParallelContext, current_context, init_distributed
from .sequence import (
    SequenceParallelLoss,
    check_sequence_parallel_model,
    gather_sequence,
    sequence_parallel_forward,
    split_lengths,
    split_sequence,
)

__all__ = [
    "DistributedError", "ParallelContext", "current_context", "init_distributed",
    "SequenceParallelLoss", "check_sequence_parallel_model", "gather_sequence", "sequence_parallel_forward",
    "split_lengths", "split_sequence",
    "all_gather_differentiable", "chunk_gla_sp", "sequence_parallel", "window_halo",
]
