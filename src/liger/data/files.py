"""Documents from local files and folders, and from tables (parquet files, `datasets` datasets).

File formats (read as UTF-8):
- `.txt`: blank-line-separated paragraphs, grouped in order into documents of at most ~4,000 characters
  (a longer paragraph stays whole). A small file is thus one document; a book becomes many, so the
  held-out split can take some of it.
- `.jsonl`: one JSON object per line (blank lines skipped); each object is one document.
- `.parquet`: each row is one document.
- a folder: every `.txt`/`.jsonl`/`.parquet` file below it (recursively, hidden entries skipped), in
  sorted path order.

The text of a record (JSON object or table row):
1. its `text_field` column, when one is given;
2. else its `text` or `content` column;
3. else, when it has `instruction` and `output` (and optionally `input`), the Alpaca prompt template used
   by the Liger and LoLCATs papers: the task preamble, `### Instruction:`, `### Input:` when the input
   is not empty, then `### Response:` and the output;
4. else a DataError listing the fields found. Records whose text is null or empty are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from .text import chunk, paragraphs

SUFFIXES = (".txt", ".jsonl", ".parquet")
TEXT_FIELDS = ("text", "content")
INSTRUCTION_FIELDS = ("instruction", "input", "output")
# The command line has no flag for the column (--data takes the known fields only), so the fix names both routes.
FIX = ("pass text_field=NAME to liger.data.load_corpus, or (for --data) rename the field holding the text to "
       "'text' or 'content'")
ONE_OBJECT = "each line must be one JSON object"

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


def alpaca(instruction: Any, input: Any, output: Any) -> str:
    """One instruction record in the Alpaca template (the variant without input when `input` is empty)."""
    inp = str(input or "").strip()
    fields = dict(instruction=str(instruction or "").strip(), input=inp, output=str(output or "").strip())
    return (ALPACA_WITH_INPUT if inp else ALPACA_NO_INPUT).format(**fields)


def text_mode(fields: list[str], text_field: str | None, where: str) -> str:
    """Which column rule applies to records with these fields: a column name, or "alpaca"."""
    if text_field:
        if text_field not in fields:
            raise DataError(f"{where}: no field {text_field!r}; fields found: {', '.join(sorted(fields)) or 'none'}")
        return text_field
    for name in TEXT_FIELDS:
        if name in fields:
            return name
    if "instruction" in fields and "output" in fields:
        return "alpaca"
    raise DataError(
        f"{where}: records have none of the known text fields ({', '.join(TEXT_FIELDS)}, or instruction/input/"
        f"output); fields found: {', '.join(sorted(fields)) or 'none'}; {FIX}"
    )


def _as_text(value: Any, field: str, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} holds {type(value).__name__} values, not text; {FIX}")
    return value


def record_text(rec: dict, text_field: str | None, where: str) -> str:
    """The text of one record (see the module docstring for the rules)."""
    mode = text_mode(list(rec), text_field, where)
    if mode == "alpaca":
        return alpaca(rec.get("instruction"), rec.get("input"), rec.get("output"))
    return _as_text(rec[mode], mode, where)


def columns_texts(columns: list[str], read, text_field: str | None, where: str) -> list[str]:
    """Texts of a table, one per row. `read(names)` returns {name: list of values} for those columns."""
    mode = text_mode(columns, text_field, where)
    if mode != "alpaca":
        return [_as_text(v, mode, where) for v in read([mode])[mode]]
    names = [c for c in INSTRUCTION_FIELDS if c in columns]
    cols = read(names)
    inputs = cols.get("input") or [""] * len(cols["instruction"])
    return [alpaca(ins, inp, out) for ins, inp, out in zip(cols["instruction"], inputs, cols["output"])]


def _read_txt(path: Path) -> list[str]:
    return chunk(paragraphs(path.read_text(encoding="utf-8")))


def _read_jsonl(path: Path, text_field: str | None) -> list[str]:
    docs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}: line {i} is not valid JSON ({e}); {ONE_OBJECT}") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {i} is a JSON {type(rec).__name__}, not an object; {ONE_OBJECT}")
        docs.append(record_text(rec, text_field, f"{path} line {i}"))
    return docs


def _read_parquet(path: Path, text_field: str | None) -> list[str]:
    import pyarrow.parquet as pq  # only .parquet files need it

    try:
        names = pq.read_schema(path).names
        return columns_texts(names, lambda cols: pq.read_table(path, columns=cols).to_pydict(), text_field, str(path))
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path} is not a readable parquet file ({type(e).__name__}: {e}); re-export it") from None


def read_file(path: Path, text_field: str | None = None) -> list[str]:
    """Documents of one .txt, .jsonl or .parquet file (empty strings included; the caller drops them)."""
    try:
        if path.suffix == ".txt":
            return _read_txt(path)
        if path.suffix == ".jsonl":
            return _read_jsonl(path, text_field)
        if path.suffix == ".parquet":
            return _read_parquet(path, text_field)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    raise DataError(unsupported(path))


def unsupported(path: Path) -> str:
    return (f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; supported: "
            f"{', '.join(SUFFIXES)}, a folder of them, or a folder saved with datasets' save_to_disk")


def data_files(folder: Path) -> list[Path]:
    """Supported files below `folder`, recursively, hidden entries skipped, sorted by relative path."""
    found = [p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts)]
    files = sorted((p for p in found if p.suffix in SUFFIXES), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        other = sorted({p.suffix or "(no extension)" for p in found})
        seen = f" (found only: {', '.join(other)})" if other else " (it is empty)"
        raise DataError(f"{folder} holds no {', '.join(SUFFIXES)} files{seen}; add some or point to another source")
    return files


def local_documents(path: Path, text_field: str | None = None) -> list[str]:
    """Non-empty documents of a .txt/.jsonl/.parquet file or a folder of them."""
    if path.is_dir():
        docs = [d for f in data_files(path) for d in read_file(f, text_field)]
        what = f"the files in {path} are empty"
    elif path.suffix in SUFFIXES:
        docs = read_file(path, text_field)
        what = f"{path} is empty"
    else:
        raise DataError(unsupported(path))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{what}: no training text; add text or use another --data source")
    return docs
