"""The built-in offline corpus: English text from the running Python's own documentation.

Two sources, read without importing any standard-library module other than `pydoc_data.topics`:

- `pydoc_data.topics.topics`: the language reference as plain text (what `help("if")` shows), one topic
  after another, each cut at paragraph boundaries into documents of at most ~4,000 characters;
- the docstrings of the standard library's `.py` files, parsed with `ast` (never imported: `this` and
  `antigravity` have side effects). One document per module: the module docstring, then each class,
  function and method docstring in source order under a heading line (`class JSONDecoder`,
  `JSONDecoder.decode()`), cut at docstring boundaries into documents of at most ~4,000 characters, so a
  training block sees related text rather than unrelated one-liners separated by EOS. Skipped: test
  packages (`test`, `tests`, `idle_test`, ...), `site-packages`, `pydoc_data` itself, generated codec
  modules, docstrings shorter than `MIN_CHARS` characters, and any docstring already seen (exact
  duplicates after normalisation; the first in sorted module order is kept).

Normalisation: `inspect.cleandoc` (dedent, strip), trailing spaces removed, reST heading underlines
(`*****`, `-----`) dropped, runs of blank lines collapsed to one. Modules are visited in sorted dotted-name
order and the final documents are sorted, so the corpus depends only on the Python version, never on
filesystem order or hash randomisation.

Size on CPython 3.11.7, counted with the SmolLM2 tokenizer (no EOS): 1,035 documents (171 from the topics,
864 module documents), 2.35M characters, 618K tokens. The default 5% hash split holds out 50 documents
(30,373 tokens: 59 blocks of 512 or 29 of 1,024) and trains on 985 (587,819 tokens: 1,150 blocks of 512).
Extraction takes ~7 s on 2 cores (parsing ~730 files); the result is cached as JSON in
$LIGER_CACHE/corpus/builtin-py<X.Y.Z>-v<VERSION>.json (written atomically), later loads take ~0.05 s.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
from pathlib import Path

from ..teacher import cache_dir
from .text import chunk, normalize

VERSION = 2  # bump whenever the extraction below changes: it names the cache file
MIN_CHARS = 40  # shorter docstrings ("Return self.") carry little language
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"}
SKIP_DOC_PREFIXES = ("Python Character Mapping Codec",)  # ~100 generated `encodings` modules


def topic_documents() -> list[str]:
    """The `pydoc_data.topics` reference text, topic by topic, cut at paragraph boundaries."""
    from pydoc_data.topics import topics  # a large module, read only to build the cache

    docs = []
    for key in sorted(topics):
        docs.extend(chunk(normalize(topics[key]).split("\n\n")))
    return docs


def stdlib_modules() -> list[tuple[str, Path]]:
    """(dotted name, path) of the standard library's `.py` files, minus tests and site-packages, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(("test_", "."))]
        rel = Path(folder).relative_to(root).parts
        for name in files:
            if name.endswith(".py") and not name.startswith("test_"):
                stem = name[:-3]
                parts = rel if stem == "__init__" else (*rel, stem)
                found.append((".".join(parts), Path(folder, name)))
    return sorted(found)


def _entries(tree: ast.Module) -> list[tuple[str, str]]:
    """(heading, raw docstring) of the module (empty heading), then of every class and function in source order."""
    out = [("", ast.get_docstring(tree, clean=False) or "")]

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                out.append((f"class {prefix}{node.name}", ast.get_docstring(node, clean=False) or ""))
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((f"{prefix}{node.name}()", ast.get_docstring(node, clean=False) or ""))
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.If, ast.Try)):  # definitions guarded by `if sys.platform ...` / `try:`
                visit(node.body + node.orelse + getattr(node, "finalbody", []), prefix)

    visit(tree.body, "")
    return out


def docstring_documents() -> list[str]:
    """Module documents of standard-library docstrings (see the module docstring for the rules). Each
    starts with a line `module <name>` (`module <name> (continued)` for its later parts)."""
    seen: set[str] = set()
    docs = []
    for module, path in stdlib_modules():
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):  # e.g. lib2to3 test data written in Python 2
            continue
        parts = []
        for heading, raw in _entries(tree):
            text = normalize(raw)
            if len(text) < MIN_CHARS or text in seen or text.startswith(SKIP_DOC_PREFIXES):
                continue
            seen.add(text)
            parts.append(f"{heading}\n\n{text}" if heading else text)
        for i, body in enumerate(chunk(parts)):
            docs.append(f"module {module}{' (continued)' if i else ''}\n\n{body}")
    return docs


def cache_path() -> Path:
    v = sys.version_info
    return cache_dir() / "corpus" / f"builtin-py{v.major}.{v.minor}.{v.micro}-v{VERSION}.json"


def builtin_documents() -> list[str]:
    """The built-in corpus: deduplicated, sorted documents (cached on disk after the first call)."""
    path = cache_path()
    if path.is_file():
        try:
            docs = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(docs, list) and docs and all(isinstance(d, str) for d in docs):
                return docs
        except (ValueError, OSError):
            pass  # a damaged cache file is rebuilt below
    docs = sorted(set(topic_documents() + docstring_documents()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return docs
