"""Multi-process training and sequence parallelism on torch.distributed (gloo on CPU, nccl on GPU).

A namespace only (import the modules): each module depends on the ones above it in this list.

- `collectives`: differentiable all-gathers (`all_gather_differentiable`, `gather_sequence`,
  `preceding_tokens`).
- `lasp`: LASP-2 sequence-parallel versions of the recurrences (`chunk_gla_sp`, `chunk_gsa_sp`,
  `chunk_gated_delta_rule_sp`, ...) and the window halo.
- `context`: the sequence split in force (`sequence_parallel`, `current`), which the mixers follow.
- `runtime`: `init_distributed` / `ParallelContext`: the process group torchrun or accelerate launch
  describe, a timeout on the rendezvous and every collective, failures as `DistributedError`.
- `softmax_layers`: layers kept as softmax attention under sequence parallelism.
- `sequence`: whole models split over ranks (`split_lengths`, `sequence_parallel_forward`,
  `SequenceParallelLoss`).
- `sharding`: FSDP2 for the frozen weights.

See docs/SCALING.md.
"""
