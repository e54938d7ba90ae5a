"""Training and evaluation text: sources, a fixed held-out split, and packing into token blocks.

`load_corpus(source)` returns the documents of a source, deduplicated and split into `train` and
`heldout`. Sources: "builtin" (offline, from Python's own documentation, see `builtin`), "self" (text
the teacher generates, see `selfgen`), a local .txt/.jsonl/.parquet file or a folder of them (see
`files`), a folder written by `datasets`' save_to_disk, or a Hugging Face hub dataset id (see `hf`).
The words "builtin" and "self" always mean those sources; a folder so named is reached as ./builtin.

The held-out split. Documents are stripped and exact duplicates removed first (the first occurrence is
kept), so one text can never sit on both sides. If the source brings its own held-out split (a saved
DatasetDict with a "validation"/"test" split) that split is the held-out set and any training document
equal to one of its documents is dropped. Otherwise a document is held out iff the first 8 bytes of the
SHA-256 of its UTF-8 text, read as a big-endian integer, fall below `heldout_fraction * 2**64`
(`is_heldout`): membership depends on the document alone, so adding or removing other documents never
moves it between the sides. If that leaves no held-out document (a tiny source) and there are at least
two, the one with the smallest hash is held out. Held-out documents are ordered by that hash (stable, and
mixed across the source); `seed` only shuffles the training documents, never the split.
`max_documents` keeps at most that many training documents (after the shuffle); for "self" it is the
number of samples to generate (default 256; "self:N" asks for N).

Mixes. "a+b" (e.g. "builtin+self:512") mixes sources, each split by its own rule above. Every source gets
an equal share of the training text: a source smaller than the largest (in characters) has its training
documents repeated, whole and in its shuffled order, until it holds as many characters as the largest
(so a run that sees a fraction of an epoch sees the sources in equal parts); then all training documents
are shuffled together. The held-out documents are interleaved one per source in turn, so the first
held-out blocks cover every source. A path that exists is never read as a mix.

`pack(texts, tokenizer, seq_len)` tokenizes documents without special tokens, appends EOS after each,
concatenates them in order and cuts [N, seq_len] int64 blocks, dropping the incomplete tail.
"""

from __future__ import annotations

import hashlib
import random
import re
import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from .builtin import builtin_documents
from .files import local_documents
from .hf import hub_documents, is_saved_dataset, looks_like_hub_id, saved_documents
from .selfgen import self_generated

__all__ = ["Corpus", "DataSpec", "load_corpus", "pack", "is_heldout"]

BUILTIN_DESCRIPTION = "builtin (pydoc_data.topics + stdlib docstrings)"
SELF_SAMPLES = 256  # default number of teacher samples for "self"
SELF_SEED = 0  # the generation seed of "self": fixed, so every seed sees the same documents and split


@dataclass
class DataSpec:
    """Where a Corpus came from and how it was split, for reports (`asdict`-able)."""

    name: str  # the source as given: "builtin", "self", a path or a hub id
    kind: str  # "builtin" | "self" | "local" | "saved" | "hub" | "mix"
    description: str
    heldout_rule: str  # "sha256 < 0.05 of the hash space" or "the source's 'validation' split"
    seed: int
    n_train_docs: int
    n_heldout_docs: int
    train_chars: int
    heldout_chars: int


@dataclass
class Corpus:
    """Documents to train on and documents never trained on (see the module docstring for the split)."""

    train: list[str]
    heldout: list[str]
    source: str  # description, e.g. "builtin (pydoc_data.topics + stdlib docstrings)"
    spec: DataSpec | None = None


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def is_heldout(text: str, fraction: float) -> bool:
    """True iff `text` (already stripped) falls in the held-out `fraction` of the SHA-256 hash space."""
    return _hash(text) < fraction * 2**64


def _dedupe(docs: list[str]) -> list[str]:
    """Stripped, non-empty documents, exact duplicates removed (first occurrence kept, order preserved)."""
    return list(dict.fromkeys(s for s in (d.strip() for d in docs) if s))


_SELF = re.compile(r"self(?::(\d+))?")


def _read_source(source: str, tokenizer, model, text_field: str | None, max_documents: int | None):
    """(documents, held-out documents or None, kind, description) of a source."""
    if source == "builtin":
        return builtin_documents(), None, "builtin", BUILTIN_DESCRIPTION
    if m := _SELF.fullmatch(source):
        n = int(m.group(1)) if m.group(1) else max_documents or SELF_SAMPLES
        docs = self_generated(model, tokenizer, num_samples=n, seed=SELF_SEED)
        name = getattr(getattr(model, "config", None), "name_or_path", "") or "the model"
        return docs, None, "self", f"self ({n} samples generated by {name})"
    path = Path(source).expanduser()
    if path.exists():
        if is_saved_dataset(path):
            train, held, desc = saved_documents(path, text_field)
            return train, held, "saved", desc
        return local_documents(path, text_field), None, "local", f"local {path}"
    if looks_like_hub_id(source):
        return hub_documents(source, text_field), None, "hub", f"hub dataset {source}"
    raise DataError(f"data path {source} does not exist; check the path, or use --data builtin")


def _hash_split(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    hashes = {d: _hash(d) for d in docs}
    held = [d for d in docs if hashes[d] < fraction * 2**64]
    if not held and fraction > 0 and len(docs) >= 2:
        held = [min(docs, key=hashes.__getitem__)]
    held_set = set(held)
    return [d for d in docs if d not in held_set], sorted(held, key=hashes.__getitem__)


def load_corpus(source: str = "builtin", *, tokenizer=None, model=None, seed: int = 0,
                heldout_fraction: float = 0.05, text_field: str | None = None,
                max_documents: int | None = None) -> Corpus:
    """Documents of `source` split into train and held-out (see the module docstring for the rules).

    `tokenizer` and `model` are needed by "self" only; `text_field` names the text column of tables and
    JSON lines; `max_documents` caps the training documents (for "self": the number of samples)."""
    source = str(source)
    if not 0 <= heldout_fraction < 1:
        raise DataError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if max_documents is not None and max_documents < 1:
        raise DataError(f"max_documents must be at least 1, got {max_documents}")
    parts = source.split("+")
    if len(parts) > 1 and not Path(source).expanduser().exists():
        return _mix(source, parts, dict(tokenizer=tokenizer, model=model, seed=seed, heldout_fraction=heldout_fraction,
                                         text_field=text_field, max_documents=max_documents))
    docs, held, kind, desc = _read_source(source, tokenizer, model, text_field, max_documents)
    docs = _dedupe(docs)
    if held is not None:
        held = _dedupe(held)
        held_set = set(held)
        train = [d for d in docs if d not in held_set]
        rule = "the source's own held-out split"
    else:
        train, held = _hash_split(docs, heldout_fraction)
        rule = f"sha256 < {heldout_fraction:g} of the hash space"
    if not train:
        why = (f"all {len(held)} of its documents fell in the held-out split; add data or lower heldout_fraction"
               if held else "it holds no text; add data or use --data builtin")
        raise DataError(f"the data source {source!r} has no training text: {why}")
    random.Random(seed).shuffle(train)
    if max_documents is not None and kind != "self":
        train = train[:max_documents]
    spec = DataSpec(name=source, kind=kind, description=desc, heldout_rule=rule, seed=seed,
                    n_train_docs=len(train), n_heldout_docs=len(held),
                    train_chars=sum(map(len, train)), heldout_chars=sum(map(len, held)))
    return Corpus(train=train, heldout=held, source=desc, spec=spec)


def _mix(source: str, parts: list[str], kwargs: dict) -> Corpus:
    """The mix `source` = "+".join(parts) (see the module docstring for the rule)."""
    if any(not p.strip() for p in parts) or len(set(parts)) < len(parts):
        raise DataError(f"--data {source!r}: a mix names each source once, joined by '+' (e.g. builtin+self:512)")
    corpora = [load_corpus(p.strip(), **kwargs) for p in parts]
    most = max(c.spec.train_chars for c in corpora)
    train: list[str] = []
    for c in corpora:
        size = 0
        while size < most:  # repeat whole documents, in order, up to the largest source's size
            for d in c.train:
                train.append(d)
                size += len(d)
                if size >= most:
                    break
    random.Random(kwargs["seed"]).shuffle(train)
    held = [c.heldout[i] for i in range(max(len(c.heldout) for c in corpora)) for c in corpora if i < len(c.heldout)]
    desc = " + ".join(c.source for c in corpora) + " (equal shares)"
    rules = "; ".join(f"{c.spec.name}: {c.spec.heldout_rule}" for c in corpora)
    spec = DataSpec(name=source, kind="mix", description=desc, heldout_rule=rules, seed=kwargs["seed"],
                    n_train_docs=len(train), n_heldout_docs=len(held), train_chars=sum(map(len, train)),
                    heldout_chars=sum(map(len, held)))
    return Corpus(train=train, heldout=held, source=desc, spec=spec)


def pack(texts: list[str], tokenizer, seq_len: int, *, add_eos: bool = True) -> torch.Tensor:
    """Token blocks of `texts`: a LongTensor [N, seq_len].

    Each document is tokenized without special tokens (in batches), followed by `tokenizer.eos_token_id`
    when `add_eos`; the documents are concatenated in order and cut into consecutive `seq_len` blocks,
    the incomplete tail dropped. DataError when the text does not fill one block."""
    if seq_len < 1:
        raise DataError(f"seq_len must be at least 1, got {seq_len}")
    eos = tokenizer.eos_token_id if add_eos else None
    if add_eos and eos is None:
        warnings.warn("the tokenizer has no EOS token: documents are packed without a separator", stacklevel=2)
    ids = array("q")
    for start in range(0, len(texts), 1024):
        for row in tokenizer(list(texts[start : start + 1024]), add_special_tokens=False, verbose=False)["input_ids"]:
            ids.extend(row)
            if eos is not None:
                ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        raise DataError(f"not enough text for one {seq_len}-token block ({len(ids)} tokens from {len(texts)} "
                        f"documents); add data or lower --seq-len")
    return torch.frombuffer(ids, dtype=torch.int64)[: n * seq_len].clone().view(n, seq_len)
