"""lm-evaluation-harness through its Hugging Face model class, on a model already in memory.

`--tasks` takes lm-eval task names (piqa, arc_easy, arc_challenge, hellaswag, winogrande, mmlu, ...; their
datasets come from the hub, so they need the network or a filled datasets cache) and paths to task YAML
files or folders (scanned with TaskManager's include_path; e.g. `dataset_path: json` with `data_files`
runs offline; relative data_files are resolved against the working directory, as lm-eval does). When only
paths are given, lm-eval's own ~15,000 task configs are not indexed (saves ~10 s).
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

from torch import nn

from ..errors import ConfigError, DataError

# The number each task reports in the Liger and LoLCATs papers' tables.
PREFERRED_METRIC = {"piqa": "acc_norm", "arc_easy": "acc", "arc_challenge": "acc_norm", "hellaswag": "acc_norm",
                    "winogrande": "acc", "mmlu": "acc"}


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("--tasks needs lm-evaluation-harness, which is not installed: "
                          "pip install 'lm-eval>=0.4.5' (or the project's [eval] extra)") from None


@functools.lru_cache(maxsize=4)
def _manager(include: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def resolve_tasks(specs: list[str]):
    """(TaskManager, task names) for lm-eval task names and paths to task YAML files or folders.
    Unknown names and paths that are not task files raise ConfigError."""
    _require_lm_eval()
    import yaml

    include, names, registered = [], [], []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.suffix in (".yaml", ".yml") or p.is_dir() or "/" in spec:
            if not p.exists():
                raise ConfigError(f"task file {spec} does not exist")
            files = [p] if p.is_file() else sorted(p.glob("*.y*ml"))
            include.append(str((p.parent if p.is_file() else p).resolve()))
            for f in files:
                try:
                    cfg = yaml.safe_load(f.read_text()) or {}
                except (yaml.YAMLError, OSError) as e:
                    raise ConfigError(f"{f} is not a readable YAML file ({e})") from None
                if not isinstance(cfg, dict) or "task" not in cfg:
                    raise ConfigError(f"{f} has no 'task:' entry; it is not an lm-eval task file")
                names.append(str(cfg["task"]))
            if not files:
                raise ConfigError(f"{spec} holds no task YAML files")
        else:
            names.append(spec)
            registered.append(spec)
    manager = _manager(tuple(dict.fromkeys(include)), bool(registered))
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = [m for n in unknown for m in difflib.get_close_matches(n, manager.all_tasks, n=3)]
        hint = f" (did you mean {', '.join(dict.fromkeys(hints))}?)" if hints else ""
        raise ConfigError(
            f"unknown lm-eval task(s): {', '.join(unknown)}{hint}; list the names with `lm-eval ls tasks`, or pass "
            "a path to a task YAML file"
        )
    return manager, names


def check_tasks(specs: list[str]) -> None:
    """Resolve the tasks and load their datasets once, so a wrong name or an unreachable dataset fails before
    any model is run. Raises ConfigError or DataError."""
    manager, names = resolve_tasks(specs)
    try:
        manager.load(names)
    except (ConnectionError, OSError, ValueError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else repr(e)
        raise DataError(f"lm-eval cannot load the data of {', '.join(names)}: {first}"
                        " (hub datasets need the network; offline, use a task YAML over local files)") from None


def run_lm_eval(model: nn.Module, tokenizer, specs: list[str], batch_size: int = 8, limit: int | None = None,
                seed: int = 0) -> dict:
    """Zero-shot lm-eval on `model` (HFLM over the instance; no chat template): {task: {metric: value}},
    metrics without their ",none" filter suffix, stderr left out, `sample_len` = examples scored."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager, names = resolve_tasks(specs)
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        out = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=False,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed, bootstrap_iters=0)
    except (ConnectionError, OSError) as e:
        raise DataError(f"lm-eval could not load the datasets of {', '.join(names)} ({e}); the hub may be "
                        "unreachable: use a task YAML over local files") from None
    results = {}
    for task, metrics in out["results"].items():
        results[task] = {k.split(",")[0]: v for k, v in metrics.items()
                         if isinstance(v, (int, float)) and not k.startswith("alias") and "stderr" not in k}
        if task in out.get("n-samples", {}):
            results[task]["sample_len"] = out["n-samples"][task].get("effective", results[task].get("sample_len"))
    return results
