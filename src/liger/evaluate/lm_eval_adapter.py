"""lm-evaluation-harness through its Hugging Face model class, on a model already in memory.

`--tasks` takes lm-eval task names (piqa, arc_easy, arc_challenge, hellaswag, winogrande, mmlu, ...; their
datasets come from the hub) and paths to task YAML files or folders (loaded with TaskManager's
include_path, e.g. a task over a local JSON file, which runs offline).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import ConfigError, DataError

PAPER_TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu")
# The number each task reports in the Liger and LoLCATs papers' tables.
PREFERRED_METRIC = {"piqa": "acc_norm", "arc_easy": "acc", "arc_challenge": "acc_norm", "hellaswag": "acc_norm",
                    "winogrande": "acc", "mmlu": "acc"}


def resolve_tasks(specs: list[str]):
    """(TaskManager, task names) for names and YAML paths; unknown names raise ConfigError."""
    import yaml
    from lm_eval.tasks import TaskManager

    include, names = [], []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.suffix in (".yaml", ".yml") or p.is_dir():
            if not p.exists():
                raise ConfigError(f"task file {spec} does not exist")
            files = [p] if p.is_file() else sorted(p.glob("*.y*ml"))
            include.append(str(p.parent if p.is_file() else p))
            for f in files:
                cfg = yaml.safe_load(f.read_text()) or {}
                if "task" not in cfg:
                    raise ConfigError(f"{f} has no 'task:' entry; it is not an lm-eval task file")
                names.append(cfg["task"])
        else:
            names.append(spec)
    manager = TaskManager(include_path=include or None)
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown lm-eval task(s): {', '.join(unknown)}; list the names with `lm-eval ls tasks`, or pass a "
            "path to a task YAML file"
        )
    return manager, names


def run_lm_eval(model: nn.Module, tokenizer, specs: list[str], batch_size: int = 8, limit: int | None = None,
                seed: int = 0) -> dict:
    """{task: {metric: value}} from lm_eval.simple_evaluate (metrics without their ",none" filter suffix)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager, names = resolve_tasks(specs)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        out = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=False,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed, bootstrap_iters=0)
    except (ConnectionError, OSError) as e:
        raise DataError(f"lm-eval could not load the datasets of {', '.join(names)} ({e}); the hub may be "
                        "unreachable: use a local task YAML") from None
    results = {}
    for task, metrics in out["results"].items():
        results[task] = {k.split(",")[0]: v for k, v in metrics.items()
                         if isinstance(v, (int, float)) and not k.startswith("alias") and "stderr" not in k}
    return results
