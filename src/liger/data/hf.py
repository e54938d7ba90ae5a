"""Documents from Hugging Face `datasets`: a folder written by `save_to_disk`, or a hub dataset id.

A saved `DatasetDict` gives its "train" split for training and its own "validation" (else "valid",
"dev", "test") split as the held-out documents; a saved `Dataset` or a hub dataset (its "train" split,
`load_dataset(id, split="train")`) is split by hash like every other source. Column rules: see `files`.

The hub is probed first (`HfApi().dataset_info`, at most `HUB_TIMEOUT` seconds, in a worker thread so a
hanging DNS lookup cannot stall it); with `HF_HUB_OFFLINE=1` or `HF_DATASETS_OFFLINE=1` it is not tried.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from ..errors import DataError
from .files import columns_texts

HUB_TIMEOUT = 10.0
HELDOUT_SPLITS = ("validation", "valid", "dev", "test")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
ALTERNATIVES = ("use --data builtin (offline), a local .txt/.jsonl/.parquet file or folder, "
                "or a folder saved with datasets' save_to_disk")


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def looks_like_hub_id(source: str) -> bool:
    """`name` or `owner/name` (no leading dot, slash or tilde, at most one slash)."""
    return bool(HUB_ID.match(source)) and not source.endswith((".txt", ".jsonl", ".parquet"))


def table_texts(ds, text_field: str | None, where: str) -> list[str]:
    """Texts of a `datasets.Dataset`, one per row."""
    return columns_texts(list(ds.column_names), lambda cols: ds.select_columns(cols).to_dict(), text_field, where)


def saved_documents(path: Path, text_field: str | None) -> tuple[list[str], list[str] | None, str]:
    """(train texts, held-out texts or None, description) of a save_to_disk folder."""
    import datasets  # imported on first use: it takes about a second to import

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"cannot read the saved dataset {path} ({type(e).__name__}: {e}); save it again with "
                        "save_to_disk") from None
    if not isinstance(ds, datasets.DatasetDict):
        return table_texts(ds, text_field, str(path)), None, f"saved dataset {path}"
    if not len(ds):
        raise DataError(f"the saved DatasetDict {path} has no splits; save one with a 'train' split")
    held_name = next((s for s in HELDOUT_SPLITS if s in ds), None)
    train_name = "train" if "train" in ds else next((s for s in sorted(ds) if s != held_name), held_name)
    if train_name == held_name:
        held_name = None
    train = table_texts(ds[train_name], text_field, f"{path} [{train_name}]")
    held = None if held_name is None else table_texts(ds[held_name], text_field, f"{path} [{held_name}]")
    desc = f"saved dataset {path} ({train_name}" + (f", held-out = {held_name})" if held_name else ")")
    return train, held, desc


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def probe_hub(repo_id: str, timeout: float = HUB_TIMEOUT) -> None:
    """Raise a DataError unless the hub answers about `repo_id` within `timeout` seconds."""
    unreachable = f"{repo_id!r} is not a local path and the Hugging Face hub is not reachable"
    if _offline():
        raise DataError(f"{unreachable} (offline mode: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set); {ALTERNATIVES}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    result: list[BaseException | None] = []

    def ask() -> None:
        try:
            HfApi().dataset_info(repo_id, timeout=timeout)
            result.append(None)
        except BaseException as e:  # reported to the caller's thread
            result.append(e)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout + 1)
    if not result:
        raise DataError(f"{unreachable} (no answer within {timeout:.0f} s); {ALTERNATIVES}")
    err = result[0]
    if err is None or isinstance(err, GatedRepoError):  # gated: load_dataset reports what access is missing
        return
    if isinstance(err, RepositoryNotFoundError):
        raise DataError(f"the Hugging Face hub has no dataset {repo_id!r} (or it is private); check the id, or "
                        f"{ALTERNATIVES}")
    raise DataError(f"{unreachable} ({type(err).__name__}: {err}); {ALTERNATIVES}")


def hub_documents(repo_id: str, text_field: str | None) -> list[str]:
    """Texts of the "train" split of a hub dataset."""
    probe_hub(repo_id)
    import datasets  # imported on first use: it takes about a second to import

    try:
        ds = datasets.load_dataset(repo_id, split="train")
    except Exception as e:
        raise DataError(f"cannot load the hub dataset {repo_id!r} ({type(e).__name__}: {e})") from None
    return table_texts(ds, text_field, repo_id)
