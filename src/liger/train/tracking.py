"""`liger linearize --report-to`: the training log's scalars sent to the experiment trackers users already run
(TensorBoard, Weights & Biases, Trackio), beside `train_log.jsonl`.

Each tracker is driven through its library's own logging API: `torch.utils.tensorboard.SummaryWriter`
(TensorBoard's event files), `wandb.init(...).log` and `trackio.init(...).log` (trackio copies wandb's API), so
liger writes no file format of its own. accelerate's trackers (`accelerate.tracking`) wrap the same calls but do
not work standalone: their methods log through accelerate's logger, which raises unless accelerate's
`PartialState` exists, and creating one in the job would change the process (thread count, environment, the
process group). Only the main process logs (the job makes no trackers on the other ranks).

What each tracker gets:
- at the start, the run's options (`JobOptions`, flattened: `train.lr`, `liger.mixer`, ...) as its
  configuration (TensorBoard: hparams);
- for each record of train_log.jsonl, its numeric values but `stage` and `step`, named `<stage>/<key>`
  (`lora/loss`, `align/nmse_mean`), at the global step: the steps of the stages before plus the record's step,
  which keeps increasing across stages;
- at the end, the report's headline figures (`report/student_ppl`, `report/ood_ratio`, ...) at the last step.

Where: TensorBoard's event files and wandb's offline run go to `<out>.work/tracking/` during the run (beside
train_log.jsonl; a resumed run continues there, and TensorBoard hides the steps the resumed run trains again)
and are copied with the rest of the run into `<out>/tracking/` at the end. wandb runs offline unless
WANDB_MODE is set (`wandb sync <out>/tracking/wandb/offline-run-*` uploads it); Trackio logs to its own local
store (`trackio show` opens it; TRACKIO_DIR moves it).
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

from ..errors import ConfigError

# name -> (module that must import, pip package that provides it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "trackio": ("trackio", "trackio")}
NONE = "none"
CHOICES = (*TRACKERS, NONE)
SUBDIR = "tracking"


def parse_report_to(text: str) -> tuple[str, ...]:
    """"tensorboard,wandb" -> ("tensorboard", "wandb"); "none" -> (); ValueError naming the valid choices."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [n for n in names if n not in CHOICES]
    if bad or not names:
        raise ValueError(f"invalid choice: {text!r} (choose from {', '.join(CHOICES)}, comma-separated)")
    if NONE in names and len(names) > 1:
        raise ValueError(f"'none' cannot be combined with trackers: {text!r}")
    return tuple(dict.fromkeys(n for n in names if n != NONE))


def check_available(names) -> None:
    """ConfigError naming the package and its install command if a chosen tracker's library is missing;
    called before any model loads."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"--report-to {name!r} is not a tracker; choose from {', '.join(CHOICES)}")
        module, package = TRACKERS[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"--report-to {name} needs the {package} package, which is not installed: "
                              f"pip install {package} (or drop --report-to {name})") from None


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested options dict as trackers take it: {"train.lr": 1e-3, ...}, values bool/int/float/str."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:  # None, lists and tuples
            out[key] = "none" if v is None else str(v)
    return out


def record_scalars(record: dict) -> dict[str, float]:
    """One train_log.jsonl record's numeric values (bools and non-finite ones aside), named `<stage>/<key>`."""
    stage = record["stage"]
    return {f"{stage}/{k}": v for k, v in record.items()
            if k not in ("stage", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def report_scalars(report: dict) -> dict[str, float]:
    """The report's headline figures: in-domain perplexities and ratio, and the trained model's out-of-domain
    ones when measured."""
    values = {f"report/{k}": report[k] for k in ("teacher_ppl", "converted_ppl", "student_ppl", "ratio")
              if isinstance(report.get(k), (int, float))}
    ood = report.get("quality", {}).get("trained", {}).get("sets", {}).get("ood", {})
    for k in ("student_ppl", "teacher_ppl", "ratio", "top1", "kl"):
        if isinstance(ood.get(k), (int, float)):
            values[f"report/ood_{k}"] = ood[k]
    return values


class _TensorBoard:
    def __init__(self, folder: Path, run_name: str, config: dict, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on a resumed run, TensorBoard hides what the interrupted run logged from `step` on
        self.writer = SummaryWriter(str(folder / run_name), purge_step=step)
        self.writer.add_hparams(config, {}, run_name="hparams")  # the options, in TensorBoard's HPARAMS tab

    def log(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class _RunAPI:
    """wandb, or trackio (the same API): `init(project=..., config=...)` -> a run with `log` and `finish`."""

    def __init__(self, module: str, run_name: str, config: dict, **init) -> None:
        self.run = importlib.import_module(module).init(project=run_name, config=config, **init)

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def finish(self) -> None:
        self.run.finish()


class Tracking:
    """The chosen trackers of one run (none: every call does nothing). The trackers start at the first value
    logged, so that TensorBoard, on a resumed run, hides what the interrupted run logged from that step on."""

    def __init__(self, names, work: str | os.PathLike, run_name: str, config: dict) -> None:
        self.names, self.dir, self.run_name, self.config = tuple(names), Path(work) / SUBDIR, run_name, config
        self.trackers: list | None = None
        self.last_step = 0

    def _start(self, step: int) -> list:
        self.dir.mkdir(parents=True, exist_ok=True)
        trackers = []
        for name in self.names:
            if name == "tensorboard":
                trackers.append(_TensorBoard(self.dir, self.run_name, self.config, step))
            elif name == "wandb":
                mode = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
                trackers.append(_RunAPI("wandb", self.run_name, self.config, dir=str(self.dir), **mode))
            else:
                trackers.append(_RunAPI("trackio", self.run_name, self.config))
        return trackers

    def log(self, values: dict, step: int) -> None:
        if not self.names or not values:
            return
        if self.trackers is None:
            self.trackers = self._start(step)
        for t in self.trackers:
            t.log(values, step=step)
        self.last_step = max(self.last_step, step)

    def log_record(self, record: dict, offset: int) -> None:
        """A train_log.jsonl record of a stage whose steps follow `offset` steps of the stages before it."""
        self.log(record_scalars(record), offset + record["step"])

    def finish(self) -> None:
        for t in self.trackers or ():
            t.finish()
        self.trackers = None


def open_tracking(names, work, run_name: str, config: dict, is_main: bool) -> Tracking:
    """The run's Tracking: `names`' trackers on the main process, none elsewhere."""
    return Tracking(names if is_main else (), work, run_name, flat_config(config))
