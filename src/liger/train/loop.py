"""A small, resumable training loop: AdamW, warmup + cosine schedule (over the step or the time budget),
gradient accumulation and clipping, token/step/time budgets, bf16 autocast, a progress bar, a JSONL log
and atomic checkpoints.

Resuming restores the exact state: the trainable tensors, the optimizer, the position in
the (seeded) data order and the RNG, so a run killed after step k and resumed ends with the same weights
as an uninterrupted run (when no time budget steers the schedule: that follows the measured elapsed time).

A checkpoint (`work_dir/checkpoint/`, replaced atomically) is safetensors and JSON only, so loading one runs
no code:
- `trainable.safetensors`: the trainable tensors;
- `optimizer.safetensors`: every tensor of the optimizer state (`state.<i>.<name>`, i the parameter's
  index in the optimizer) and the RNG states (`rng.torch`, the CPU generator's bytes; `rng.cuda`, the
  training device's, on CUDA);
- `optimizer.json`: the parameter groups' hyperparameters, any non-tensor optimizer state, Python's
  `random` state (as JSON integers);
- `state.json`: stage, step and token counters, elapsed seconds, data position, the run's fingerprint.
A work folder of the older format (`optimizer.pt`, serialized Python objects whose loading can run code) is
refused, never read.

Several processes (torchrun, see liger.distributed): each data-parallel replica reads its own rows of every
global batch, the gradients of the trainable tensors are summed over all ranks in one coalesced all-reduce
per optimizer step and divided by the number of replicas (so a step equals the single-process step on the
same global batch), and only rank 0 writes checkpoints and the log. Under sequence parallelism the ranks of
a replica read the same rows and each returns its share of the loss (`SequenceParallelLoss`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_output_dir
from ..distributed.runtime import ParallelContext, current_context
from ..errors import CheckpointError, ConfigError
from ..runinfo import CPUINFO, cpu_flags

Tensor = torch.Tensor


CHECKPOINT_FILES = ("state.json", "trainable.safetensors", "optimizer.safetensors", "optimizer.json")
OLD_FORMAT_FILES = ("optimizer.pt",)  # written by older versions; loading it could run code: never read
STATE_KEYS = {"stage": str, "done": bool, "step": int, "tokens": int, "elapsed": (int, float), "position": int,
              "fingerprint": dict}
START_OVER = "rerun without --resume to start over"
PRECISIONS = ("auto", "bf16", "fp32")
SCHEDULES = ("cosine", "constant")
ADAM_BETAS = (0.9, 0.95)
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512_BF16 / AMX-BF16; Arm's BF16 ("Features")


def resolve_precision(precision: str, device_type: str, cpuinfo: str | os.PathLike = CPUINFO) -> str:
    """"bf16" or "fp32" for `precision` ("auto" picks bf16 where it speeds training up: a CUDA GPU with bf16,
    or a CPU with bf16 matrix units; elsewhere bf16 is emulated and measured 3-4x slower than fp32, see
    docs/PERFORMANCE.md)."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device_type == "cpu" and cpu_flags(cpuinfo) & BF16_CPU_FLAGS else "fp32"


@dataclass
class TrainConfig:
    """Optimisation settings of one training stage."""

    lr: float = 1e-3
    warmup_steps: int = 10
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr) or "constant", after linear warmup
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 1  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    clip: float = 1.0
    max_steps: int | None = None
    max_tokens: int | None = None
    max_minutes: float | None = None
    precision: str = "auto"  # "bf16" (autocast), "fp32", or "auto": bf16 where it is fast (`resolve_precision`)
    checkpoint_every: int = 25  # optimizer steps; 0 = only at the end of the stage
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        for name in ("max_steps", "max_tokens", "max_minutes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")

    def total_steps(self, seq_len: int, replicas: int = 1) -> int:
        """Optimizer steps the token/step budgets allow (the time budget may stop earlier); `replicas`
        data-parallel processes each train on batch_size * grad_accum sequences per step."""
        per_step = self.batch_size * self.grad_accum * seq_len * replicas
        limits = [self.max_steps or math.inf, math.ceil(self.max_tokens / per_step) if self.max_tokens else math.inf]
        steps = min(limits)
        if steps == math.inf:
            if self.max_minutes is None:
                raise ConfigError("give a budget: --max-tokens, --max-steps or --max-minutes")
            return 10**9  # time-bounded: the schedule follows the elapsed time
        return int(steps)


class DataOrder:
    """Seeded order over the rows of a [N, L] block tensor, epoch after epoch; `position` counts rows served."""

    def __init__(self, blocks: Tensor, seed: int, position: int = 0) -> None:
        if blocks.dim() != 2 or blocks.shape[0] == 0:
            raise ConfigError("training data must be a non-empty [N, L] tensor of token blocks")
        self.blocks, self.seed, self.position = blocks, seed, position
        self._epoch, self._order = -1, None

    def _row(self, p: int) -> int:
        n = self.blocks.shape[0]
        epoch = p // n
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(n, generator=gen)
        return int(self._order[p % n])

    def next(self, batch_size: int, shard: int = 0, shards: int = 1) -> Tensor:
        """The next `shards * batch_size` rows form one global batch; return shard `shard`'s `batch_size`
        of them (disjoint, deterministic), and advance past all of them."""
        rows = [self._row(self.position + shard * batch_size + i) for i in range(batch_size)]
        self.position += shards * batch_size
        return self.blocks[rows]

    @property
    def epochs(self) -> float:
        return self.position / self.blocks.shape[0]


def lr_factor(cfg: TrainConfig, step: int, total: int, elapsed: float = 0.0) -> float:
    """Multiplier of cfg.lr for optimizer step `step` (0-based): linear warmup, then cosine down to
    min_lr_ratio over whichever budget is spent first (steps, or the time budget after `elapsed` seconds)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps) if total < 10**9 else 0.0
    if cfg.max_minutes:
        progress = max(progress, elapsed / (cfg.max_minutes * 60))
    progress = min(1.0, progress)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


LossFn = Callable[[nn.Module, Tensor], tuple[Tensor, dict[str, float]]]


@dataclass
class StageResult:
    steps: int
    tokens: int
    seconds: float
    stopped_by: str  # "budget" | "time"
    final_loss: float | None


class Trainer:
    """Trains `params` (named trainable tensors of `model`) on `blocks` with `loss_fn(model, batch)`.

    Checkpoints go to `work_dir/checkpoint` (atomic); `log` is appended to `work_dir/train_log.jsonl`.
    parallel: the processes training together (default: the initialised torch.distributed group, if any,
    as plain data parallelism); batches go to `parallel.device`. step_context: entered around each
    micro-batch's forward and backward (sequence parallelism's split, `SequenceParallelLoss.context`)."""

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, nn.Parameter],
        blocks: Tensor,
        loss_fn: LossFn,
        cfg: TrainConfig,
        work_dir: str | os.PathLike,
        stage: str,
        fingerprint: dict,
        show_progress: bool = True,
        parallel: ParallelContext | None = None,
        step_context: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        if not params:
            raise ConfigError(f"stage {stage!r} has no trainable parameters")
        device = next(iter(params.values())).device.type
        cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
        self.model, self.params, self.loss_fn, self.cfg = model, params, loss_fn, cfg
        self.work_dir, self.stage, self.fingerprint = Path(work_dir), stage, fingerprint
        self.seq_len = blocks.shape[1]
        self.data = DataOrder(blocks, cfg.seed)
        self.par = parallel if parallel is not None else current_context()
        self.step_context = step_context or contextlib.nullcontext
        self.total = cfg.total_steps(self.seq_len, self.par.replicas)
        decay = [p for n, p in params.items() if p.dim() >= 2]
        no_decay = [p for n, p in params.items() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=ADAM_BETAS)
        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.show_progress = show_progress and self.par.is_main
        self.on_step: Callable[[int], None] | None = None  # test hook, called after each step's checkpoint
        self.on_record: Callable[[dict], None] | None = None  # main process: each log record, once written

    # ---- checkpoints -------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.work_dir / "checkpoint"

    def save_checkpoint(self, done: bool = False) -> None:
        """Rank 0 writes (atomically); every rank waits until it is complete."""
        if self.par.is_main:
            self._write_checkpoint(done)
        self.par.barrier(f"writing the checkpoint of step {self.step}")

    def _write_checkpoint(self, done: bool) -> None:
        state = {
            "stage": self.stage,
            "done": done,
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "position": self.data.position,
            "fingerprint": self.fingerprint,
            "train_config": asdict(self.cfg),
        }
        tensors, meta = optimizer_to_files(self.opt.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        device = self._device()
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        meta["python_rng"] = _python_rng_to_json(random.getstate())
        with atomic_output_dir(self.ckpt_dir, keep_other_files=False) as tmp:
            save_file({n: p.detach().contiguous() for n, p in self.params.items()}, str(tmp / "trainable.safetensors"))
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(meta))
            (tmp / "state.json").write_text(json.dumps(state, indent=2))

    def _device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def load_checkpoint(self) -> bool:
        """Restore this stage from `work_dir/checkpoint`; False if the checkpoint is of an earlier stage."""
        state = read_checkpoint_state(self.work_dir)
        if state is None:
            return False
        check_fingerprint(state, self.fingerprint, self.ckpt_dir)
        if state["stage"] != self.stage:
            return False
        path = self.ckpt_dir / "trainable.safetensors"
        tensors = read_tensors(path)
        check_tensors_fit(tensors, self.params, path)
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(tensors[n])
        self._load_optimizer_and_rng()
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.data.position = state["position"]
        if self.par.is_main:
            self._truncate_log()
        return True

    def _load_optimizer_and_rng(self) -> None:
        tensors = read_tensors(self.ckpt_dir / "optimizer.safetensors")
        meta = read_json(self.ckpt_dir / "optimizer.json")
        try:
            state_dict = optimizer_from_files(tensors, meta)
            params = [p for group in self.opt.param_groups for p in group["params"]]
            for i, values in state_dict["state"].items():
                for name, value in values.items():
                    if isinstance(value, Tensor) and value.dim() and value.shape != params[i].shape:
                        raise ValueError(f"state.{i}.{name} has shape {list(value.shape)}, the parameter "
                                         f"{list(params[i].shape)}")
            self.opt.load_state_dict(state_dict)
            random.setstate(_python_rng_from_json(meta["python_rng"]))
            torch.set_rng_state(tensors["rng.torch"])
            if "rng.cuda" in tensors and self._device().type == "cuda":
                torch.cuda.set_rng_state(tensors["rng.cuda"], self._device())
        except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"the optimizer state in {self.ckpt_dir} does not fit this run ({e}); "
                                  f"{START_OVER}") from None

    def _truncate_log(self) -> None:
        """Drop the log records written after the checkpoint's step (they will be trained again, this stage's
        later steps and any later stage's)."""
        log_path = self.work_dir / "train_log.jsonl"
        if not log_path.is_file():
            return
        records = read_log(log_path)
        at = [i for i, r in enumerate(records) if r["stage"] == self.stage and r["step"] == self.step]
        keep = records[: at[-1] + 1] if at else [r for r in records if r["stage"] != self.stage]
        tmp = log_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, log_path)

    # ---- training ----------------------------------------------------------------------------------
    def _autocast(self):
        dev = next(iter(self.params.values())).device.type
        return torch.autocast(dev, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def _micro_step(self, batch: Tensor) -> tuple[float, dict[str, float]]:
        """Forward and backward of one micro-batch (gradients accumulate); returns its loss and metrics."""
        cfg = self.cfg
        with self.step_context(), self._autocast():
            loss, parts = self.loss_fn(self.model, batch.to(self.par.device))
        with self.step_context():
            (loss / cfg.grad_accum).backward()
        return loss.item(), parts

    def _sync(self, loss: float, metrics: dict[str, float], dt: float) -> tuple[float, dict[str, float], float]:
        """Sum the gradients and the reported numbers over all ranks, in one all-reduce: gradients and
        losses become replica means (sums over a sequence-parallel group's shares), dt the mean time."""
        par = self.par
        if not par.distributed:
            return loss, metrics, dt
        grads = []
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        keys = sorted(metrics)
        stats = torch.tensor([loss, *(metrics[k] for k in keys), dt], dtype=torch.float64, device=par.device)
        par.all_reduce_sum([*grads, stats], f"the gradient all-reduce of step {self.step + 1}")
        for g in grads:
            g.div_(par.replicas)
        stats = stats.cpu().tolist()
        return (stats[0] / par.replicas, {k: v / par.replicas for k, v in zip(keys, stats[1:-1])},
                stats[-1] / par.world)

    def run(self, done: bool = False) -> StageResult:
        """Train until a budget is spent; returns what was done. `done` (from a resumed finished stage)
        skips straight to the result."""
        cfg = self.cfg
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.seq_len * self.par.replicas  # global
        deadline = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        log_path = self.work_dir / "train_log.jsonl"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.par.broadcast_(self.params.values(), "broadcasting the trainable tensors from rank 0")
        micro_what = "a forward/backward with sequence-parallel collectives" if self.par.sp > 1 else None
        stopped_by, last_loss = "budget", None
        bar = None
        if not done and self.step < self.total:
            bar_total = self.total if self.total < 10**9 else None
            bar = tqdm(total=bar_total, initial=self.step, desc=f"train {self.stage}", unit="step",
                       disable=not self.show_progress, dynamic_ncols=True)
        self.model.train()
        while not done and self.step < self.total:
            if self.elapsed >= deadline:
                stopped_by = "time"
                break
            t0 = time.perf_counter()
            lr = cfg.lr * lr_factor(cfg, self.step, self.total, self.elapsed)
            for group in self.opt.param_groups:
                group["lr"] = lr
            metrics: dict[str, float] = {}
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                batch = self.data.next(cfg.batch_size, self.par.replica, self.par.replicas)
                with self.par.guard(micro_what) if micro_what else contextlib.nullcontext():
                    loss, parts = self._micro_step(batch)
                loss_sum += loss / cfg.grad_accum
                for key, value in parts.items():
                    metrics[key] = metrics.get(key, 0.0) + value / cfg.grad_accum
            # All ranks must agree on what decides the next step (loss, elapsed time): summed here.
            loss_sum, metrics, dt = self._sync(loss_sum, metrics, time.perf_counter() - t0)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(
                    f"loss became {loss_sum} at step {self.step + 1}; lower the learning rate (--lr) or use --precision fp32"
                )
            grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if not self.par.distributed:
                dt = time.perf_counter() - t0
            self.step += 1
            self.tokens += tokens_per_step
            self.elapsed += dt
            last_loss = loss_sum
            record = {
                "stage": self.stage, "step": self.step, "tokens": self.tokens, "loss": loss_sum,
                "lr": lr, "grad_norm": float(grad_norm), "seconds": self.elapsed,
                "tokens_per_s": tokens_per_step / dt, "epoch": round(self.data.epochs, 4), **metrics,
            }
            if self.par.is_main:
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if self.on_record is not None:
                    self.on_record(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{tokens_per_step / dt:.0f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < self.total:
                self.save_checkpoint()
            if self.on_step is not None:
                self.on_step(self.step)
        if bar is not None:
            bar.close()
        self.model.eval()
        if not done:
            self.save_checkpoint(done=True)
        return StageResult(self.step, self.tokens, self.elapsed, stopped_by, last_loss)


def _corrupted(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} {why}; {START_OVER}")


def read_json(path: str | os.PathLike, kind: type = dict):
    """The JSON value in a work-folder file, which must be a `kind`; CheckpointError naming the file if it is
    missing, unreadable, not JSON or not a `kind`."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise _corrupted(path, "is missing") from None
    except UnicodeDecodeError:
        raise _corrupted(path, "is corrupted (not text)") from None
    except ValueError as e:
        raise _corrupted(path, f"is corrupted or incomplete (not valid JSON: {e})") from None
    except OSError as e:
        raise _corrupted(path, f"cannot be read ({e})") from None
    if not isinstance(value, kind):
        raise _corrupted(path, f"is corrupted: it holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def check_safetensors(path: str | os.PathLike) -> list[str]:
    """The tensor names of a work-folder safetensors file, after checking its header (a zero-byte, truncated
    or foreign file fails here); CheckpointError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise _corrupted(path, "is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupted(path, f"is corrupted or incomplete ({e})") from None


def read_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a work-folder safetensors file (CheckpointError naming it if it cannot be read)."""
    check_safetensors(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupted(Path(path), f"is corrupted or incomplete ({e})") from None


def check_tensors_fit(tensors: dict[str, Tensor], params: dict[str, Tensor], path: Path) -> None:
    """CheckpointError unless `tensors` (read from `path`) has exactly the names and shapes of `params`."""
    if tensors.keys() != params.keys():
        raise _corrupted(path, "does not hold this stage's trainable tensors")
    for n, p in params.items():
        if tensors[n].shape != p.shape:
            raise _corrupted(path, f"holds {n} with shape {list(tensors[n].shape)}, not {list(p.shape)}")


def optimizer_to_files(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    """An optimizer's state_dict as (safetensors tensors, JSON-able rest)."""
    tensors, other = {}, {}
    for i, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"state.{i}.{name}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(i), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def optimizer_from_files(tensors: dict[str, Tensor], meta: dict) -> dict:
    """The inverse of `optimizer_to_files` (JSON lists in the parameter groups, such as betas, become tuples)."""
    state: dict[int, dict] = {int(i): dict(values) for i, values in meta["state"].items()}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "state":
            i, _, name = rest.partition(".")
            state.setdefault(int(i), {})[name] = value
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _python_rng_to_json(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _python_rng_from_json(value: list) -> tuple:
    version, internal, gauss_next = value
    return version, tuple(internal), gauss_next


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a training log (JSON lines); an unterminated last line (a kill while it was written) is
    dropped, any other unreadable line is a CheckpointError naming the file."""
    path = Path(path)
    try:
        lines = path.read_text().split("\n")[:-1]  # what follows the last newline was cut off
    except UnicodeDecodeError:
        raise _corrupted(path, "is corrupted (not text)") from None
    except OSError as e:
        raise _corrupted(path, f"cannot be read ({e})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            record = {}
        if record is None:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("stage"), str) or not isinstance(
                record.get("step"), int):
            raise _corrupted(path, f"is corrupted (line {number} is not a training record)")
        records.append(record)
    return records


def read_checkpoint_state(work_dir: str | os.PathLike) -> dict | None:
    """The checkpoint's state.json (None: no checkpoint); refuses a checkpoint of the older format."""
    ckpt = Path(work_dir) / "checkpoint"
    old = [n for n in OLD_FORMAT_FILES if (ckpt / n).exists()]
    if old and not (ckpt / "optimizer.safetensors").exists():
        raise CheckpointError(f"the checkpoint in {ckpt} was written by an older liger (its {old[0]} could run code "
                              f"when loaded, so liger no longer reads it); start over without --resume")
    path = ckpt / "state.json"
    if not path.exists():
        return None
    state = read_json(path)
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise _corrupted(path, f"is corrupted (no valid {key!r})")
    return state


def check_checkpoint(work_dir: str | os.PathLike) -> dict | None:
    """Read and check every file of the checkpoint in `work_dir` and the training log against it, before a
    resumed run loads anything; returns the checkpoint's state (None: there is none). CheckpointError, naming
    the file and how to start over, on a missing, corrupted or old-format file."""
    work_dir = Path(work_dir)
    state = read_checkpoint_state(work_dir)
    if state is None:
        return None
    ckpt = work_dir / "checkpoint"
    check_safetensors(ckpt / "trainable.safetensors")
    names = check_safetensors(ckpt / "optimizer.safetensors")
    meta = read_json(ckpt / "optimizer.json")
    if "rng.torch" not in names or not isinstance(meta.get("param_groups"), list) or not isinstance(
            meta.get("state"), dict) or not isinstance(meta.get("python_rng"), list):
        raise _corrupted(ckpt / "optimizer.json", "or optimizer.safetensors beside it is incomplete")
    log = work_dir / "train_log.jsonl"
    if log.exists() and state["step"] > 0:
        if not any(r["stage"] == state["stage"] and r["step"] == state["step"] for r in read_log(log)):
            raise _corrupted(log, f"is incomplete: it has no record of step {state['step']} of stage "
                             f"{state['stage']!r}, where the checkpoint is")
    return state


def check_fingerprint(state: dict, fingerprint: dict, ckpt_dir: Path) -> None:
    """CheckpointError unless the checkpoint `state` was made with this run's settings."""
    if state["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"the checkpoint in {ckpt_dir} was made with different settings "
            f"({_diff(state['fingerprint'], fingerprint)}); rerun with the same flags, or without --resume "
            "to start over"
        )


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:5])
