"""The built-in offline corpus: English text from the running Python's own documentation.

Sources, read without importing any standard-library module beyond `pydoc_data`:
- `pydoc_data.topics.topics` (the language reference as plain text), cut into paragraphs grouped into
  documents of about 2,000 characters;
- every module, class and function docstring of the standard library's `.py` files (parsed with `ast`;
  test packages and site-packages skipped; docstrings shorter than 40 characters dropped).
Whitespace is normalised with `inspect.cleandoc`; exact duplicates are removed; the order is sorted, so the
corpus is the same on every run of a given Python version. About 2.2M characters (~550K SmolLM2 tokens) on
CPython 3.11. Cached as JSON under $LIGER_CACHE/corpus/.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import sys
import sysconfig
from pathlib import Path

from ..teacher import cache_dir

VERSION = 1  # bump when the extraction changes
MIN_CHARS = 40
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}


def _topics() -> list[str]:
    from pydoc_data.topics import topics

    docs = []
    for key in sorted(topics):
        buf: list[str] = []
        for para in topics[key].split("\n\n"):
            para = para.strip()
            if not para:
                continue
            buf.append(para)
            if sum(map(len, buf)) >= 2000:
                docs.append("\n\n".join(buf))
                buf = []
        if buf:
            docs.append("\n\n".join(buf))
    return docs


def _docstrings() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("lib2to3"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(folder, name).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= MIN_CHARS:
                        docs.append(doc)
    return docs


def builtin_documents() -> list[str]:
    """Deduplicated, sorted documents of the built-in corpus (cached on disk)."""
    path = cache_dir() / "corpus" / f"builtin-py{sys.version_info.major}.{sys.version_info.minor}-v{VERSION}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass  # a corrupted cache is rebuilt
    docs = sorted({inspect.cleandoc(d).strip() for d in _topics() + _docstrings()} - {""})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(docs))
    os.replace(tmp, path)
    return docs
