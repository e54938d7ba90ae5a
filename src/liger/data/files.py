"""Documents from local files, folders, `datasets` save_to_disk folders and hub datasets.

- `.txt`: paragraphs separated by blank lines are grouped into documents of about 2,000 characters.
- `.jsonl`: one JSON object per line; its text is the `text_field` column, else `text` or `content`, else
  an instruction record (`instruction`, optional `input`, `output`) formatted with the Alpaca template.
- `.parquet` and `datasets` tables: the same column rules.
- a folder: every supported file below it, in sorted order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DataError

SUFFIXES = (".txt", ".jsonl", ".parquet")
TEXT_FIELDS = ("text", "content")

ALPACA = (
    "Below is an instruction that describes a task{extra}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}"
)


def record_text(rec: dict, text_field: str | None, where: str) -> str:
    """The text of one record (see the module docstring for the column rules)."""
    if text_field:
        if text_field not in rec:
            raise DataError(f"{where}: no field {text_field!r} (fields: {', '.join(sorted(rec))})")
        return str(rec[text_field])
    for f in TEXT_FIELDS:
        if f in rec:
            return str(rec[f])
    if "instruction" in rec and "output" in rec:
        inp = str(rec.get("input") or "").strip()
        return ALPACA.format(
            extra=", paired with an input that provides further context" if inp else "",
            instruction=str(rec["instruction"]).strip(),
            input_block=f"### Input:\n{inp}\n\n" if inp else "",
            output=str(rec["output"]).strip(),
        )
    raise DataError(
        f"{where}: records have none of the known text fields ({', '.join(TEXT_FIELDS)}, or instruction/output); "
        f"fields found: {', '.join(sorted(rec)) or 'none'}. Pass the column to use as text_field"
    )


def paragraphs(text: str, size: int = 2000) -> list[str]:
    docs, buf = [], []
    for para in text.split("\n\n"):
        if para.strip():
            buf.append(para.strip())
        if buf and sum(map(len, buf)) >= size:
            docs.append("\n\n".join(buf))
            buf = []
    if buf:
        docs.append("\n\n".join(buf))
    return docs


def _read_file(path: Path, text_field: str | None) -> list[str]:
    try:
        if path.suffix == ".txt":
            return paragraphs(path.read_text(encoding="utf-8"))
        if path.suffix == ".jsonl":
            docs = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{path}: line {i} is not valid JSON ({e})") from None
                if not isinstance(rec, dict):
                    raise DataError(f"{path}: line {i} is not a JSON object")
                docs.append(record_text(rec, text_field, f"{path} line {i}"))
            return docs
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:
            raise DataError(f"{path} is not a readable parquet file ({e})") from None
        return [record_text(r, text_field, str(path)) for r in rows]
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def local_documents(spec: str, text_field: str | None) -> list[str]:
    """Documents of a file or folder of .txt/.jsonl/.parquet files."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"{path} holds no {', '.join(SUFFIXES)} files")
    elif path.suffix in SUFFIXES:
        files = [path]
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    return [d for f in files for d in _read_file(f, text_field)]


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "dataset_dict.json", "state.json"))


def _table_documents(table, text_field: str | None, where: str) -> list[str]:
    return [record_text(r, text_field, where) for r in table]


def dataset_documents(spec: str, text_field: str | None) -> tuple[list[str], list[str] | None]:
    """(documents, held-out documents or None) of a save_to_disk folder or a hub dataset id. A saved
    DatasetDict's "validation" (else "test") split is its held-out part."""
    import datasets

    path = Path(spec).expanduser()
    if is_saved_dataset(path):
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"cannot read the saved dataset {path}: {e}") from None
    else:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1" or not _hub_reachable():
            raise DataError(
                f"{spec!r} is not a local path and the Hugging Face hub is not reachable; use --data builtin, "
                "a local .txt/.jsonl/.parquet file or folder, or a dataset saved with save_to_disk"
            )
        try:
            ds = datasets.load_dataset(spec, split="train")
        except Exception as e:
            raise DataError(f"cannot load the hub dataset {spec!r}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        held = next((ds[s] for s in ("validation", "test") if s in ds), None)
        train = ds["train"] if "train" in ds else ds[sorted(ds)[0]]
        return (_table_documents(train, text_field, spec),
                None if held is None else _table_documents(held, text_field, spec))
    return _table_documents(ds, text_field, spec), None


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
