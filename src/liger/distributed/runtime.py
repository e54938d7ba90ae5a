"""Process groups for multi-process training: set up from the environment `torchrun` and
`accelerate launch` create, with a timeout, and turned into clear errors when a rank fails or never comes.

Ranks form `world / sp` data-parallel replicas of `sp` consecutive ranks each (rank = replica * sp + i);
the ranks of a replica split every sequence between them (sequence parallelism, `sp > 1`) and read the same
batches, while replicas read disjoint batches. With `sp == 1` this is plain data parallelism.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..errors import ConfigError, LigerError

Tensor = torch.Tensor

DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(LigerError, RuntimeError):
    """A rank failed, stalled or never joined: a collective or the rendezvous timed out or broke."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not a whole number") from None


@dataclass
class ParallelContext:
    """Where this process stands: `rank` of `world` processes, sequence-parallel groups of `sp` ranks.

    `device` is where the model and batches go (cuda:LOCAL_RANK under nccl, else the CPU). A single process
    is `ParallelContext()` (rank 0 of 1); every method is then a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sp: int = 1
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sp_group: object = None
    owns_group: bool = False  # this context initialised the process group (and destroys it in shutdown)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def replicas(self) -> int:
        """Data-parallel replicas (each reads its own batches)."""
        return self.world // self.sp

    @property
    def replica(self) -> int:
        return self.rank // self.sp

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp

    # ---- collectives, with failures turned into DistributedError -----------------------------------
    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a failed or timed-out collective inside the block into a DistributedError naming `what`."""
        if not self.distributed:
            yield
            return
        try:
            yield
        except DistributedError:
            raise
        except RuntimeError as e:  # gloo raises RuntimeError, nccl/stores DistError (a RuntimeError)
            raise DistributedError(
                f"rank {self.rank}/{self.world}: {what} failed: another rank crashed, stalled or was killed, or did "
                f"not answer within the timeout ({self.timeout_s:g} s). Check the other ranks' logs; checkpoints are "
                f"written atomically, so rerun with --resume (same number of processes) to continue. "
                f"[{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}]"
            ) from e

    def barrier(self, what: str = "barrier") -> None:
        if not self.distributed:
            return
        with self.guard(what):
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_sum(self, tensors: Iterable[Tensor], what: str = "gradient all-reduce") -> None:
        """Sum each tensor over all ranks, in place, in one collective per dtype (coalesced)."""
        if not self.distributed:
            return
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        with self.guard(what):
            for group in by_dtype.values():
                flat = torch.cat([t.reshape(-1) for t in group])
                dist.all_reduce(flat)
                offset = 0
                for t in group:
                    t.copy_(flat[offset : offset + t.numel()].view_as(t))
                    offset += t.numel()

    def broadcast_(self, tensors: Iterable[Tensor], what: str = "broadcast from rank 0") -> None:
        """Overwrite each tensor with rank 0's, in place."""
        if not self.distributed:
            return
        tensors = list(tensors)
        with self.guard(what), torch.no_grad():
            for t in tensors:
                buf = t.detach().contiguous()
                dist.broadcast(buf, 0)
                if buf.data_ptr() != t.data_ptr():
                    t.copy_(buf)

    def check_same(self, tensor: Tensor, what: str) -> None:
        """Raise unless `tensor` (any shape, a cheap fingerprint is compared) is equal on every rank."""
        if not self.distributed:
            return
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        digest = hashlib.sha256(data).digest()
        local = torch.tensor([tensor.numel(), int.from_bytes(digest[:7], "little")], dtype=torch.int64)
        mine = local.clone().to(self.device)
        with self.guard(f"comparing {what} across ranks"):
            dist.broadcast(mine, 0)
        if not torch.equal(mine.cpu(), local):
            raise DistributedError(
                f"rank {self.rank} has different {what} than rank 0; every rank must see the same files and "
                "settings (a shared or identical data/model folder, the same flags)"
            )

    @contextlib.contextmanager
    def main_first(self, what: str) -> Iterator[None]:
        """Rank 0 runs the block first (downloads, conversions into a shared cache), then the others."""
        if self.distributed and not self.is_main:
            self.barrier(f"waiting for rank 0: {what}")
        yield
        if self.distributed and self.is_main:
            self.barrier(f"rank 0 done: {what}")

    def shutdown(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, sequence_parallel: int = 1) -> ParallelContext:
    """A ParallelContext from the environment torchrun / accelerate launch set (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT). WORLD_SIZE unset or 1: a single process. Otherwise the process group is
    initialised (nccl with one GPU per process when CUDA is available, else gloo) with `timeout_s` for the
    rendezvous and every collective, unless one is already initialised (then it is reused).

    sequence_parallel: ranks per replica that split each sequence; must divide WORLD_SIZE."""
    world = _env_int("WORLD_SIZE", 1)
    sp = int(sequence_parallel)
    if sp < 1:
        raise ConfigError(f"--sequence-parallel must be >= 1, got {sp}")
    if world % sp:
        raise ConfigError(
            f"--sequence-parallel {sp} does not divide the {world} processes; launch a multiple of {sp} "
            f"processes (torchrun --nproc-per-node {sp} ...)"
        )
    if timeout_s <= 0:
        raise ConfigError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    if world <= 1:
        return ParallelContext(timeout_s=timeout_s)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set; launch with torchrun or "
                          "accelerate launch (see docs/SCALING.md)")
    use_cuda = torch.cuda.is_available() and os.environ.get("LIGER_DIST_BACKEND", "") != "gloo"
    backend = "nccl" if use_cuda else "gloo"
    device = torch.device("cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                              "start one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    ctx = ParallelContext(rank=rank, world=world, local_rank=local_rank, sp=sp, backend=backend,
                          timeout_s=timeout_s, device=device)
    if not dist.is_initialized():
        addr = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            raise DistributedError(
                f"rank {rank}/{world}: the rendezvous at {addr} failed within {timeout_s:g} s: not all {world} "
                "processes joined (a node or process did not start, crashed, or uses another MASTER_ADDR/"
                "MASTER_PORT/WORLD_SIZE). Start all of them (torchrun does), or raise --dist-timeout. "
                f"[{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}]"
            ) from e
        ctx.owns_group = True
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise ConfigError("an initialised process group disagrees with RANK/WORLD_SIZE")
    else:
        ctx.backend = dist.get_backend()
    if sp > 1:
        with ctx.guard("creating the sequence-parallel groups"):
            for r in range(world // sp):  # every rank creates every group, in the same order
                group = dist.new_group(list(range(r * sp, (r + 1) * sp)))
                if r == rank // sp:
                    ctx.sp_group = group
    return ctx


def current_context() -> ParallelContext:
    """A ParallelContext for an already initialised default process group (plain data parallelism), or a
    single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ParallelContext()
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return ParallelContext(rank=dist.get_rank(), world=dist.get_world_size(),
                           local_rank=_env_int("LOCAL_RANK", 0), backend=backend, device=device)
