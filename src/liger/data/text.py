"""Plain-text helpers shared by the sources: whitespace normalisation and cutting text into documents."""

from __future__ import annotations

import inspect
import re

DOC_CHARS = 4000  # documents are cut at paragraph (or docstring) boundaries to at most this many characters
_UNDERLINE = re.compile(r"^[ \t]*([*=\-~^#+])\1{2,}[ \t]*$", re.MULTILINE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def normalize(text: str) -> str:
    """Dedent (`inspect.cleandoc`), drop reST heading underlines (`*****`, `-----`) and trailing spaces,
    collapse runs of blank lines into one."""
    text = inspect.cleandoc(text.replace("\r\n", "\n"))
    text = "\n".join(line.rstrip() for line in _UNDERLINE.sub("", text).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def paragraphs(text: str) -> list[str]:
    """Blank-line-separated paragraphs of `text` (trailing spaces removed, indentation kept, empties dropped)."""
    text = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
    return [p.strip("\n") for p in _BLANK_LINE.split(text) if p.strip()]


def chunk(parts: list[str], limit: int = DOC_CHARS) -> list[str]:
    """Join consecutive parts with blank lines into documents of at most `limit` characters; a single
    longer part stays whole."""
    docs: list[str] = []
    buf: list[str] = []
    size = 0
    for part in parts:
        if buf and size + len(part) + 2 > limit:
            docs.append("\n\n".join(buf))
            buf, size = [], 0
        buf.append(part)
        size += len(part) + 2
    if buf:
        docs.append("\n\n".join(buf))
    return docs
