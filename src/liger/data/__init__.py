"""Training and evaluation text: sources, a fixed held-out split, and packing into token blocks.

`load_corpus(source)` returns the documents of a source, deduplicated and split into `train` and
`heldout`. Sources: "builtin" (offline, from Python's own documentation, see `builtin`), "self" (text
the teacher generates, see `selfgen`), "recall" (synthetic retrieval episodes, passkey and associative
recall in prose filler, 4,000 documents or "recall:N" for N, see `recall`), a local .txt/.jsonl/.parquet
file or a folder of them (see `files`), a folder written by `datasets`' save_to_disk, or a Hugging Face hub
dataset id (see `hf`). The words "builtin", "self" and "recall" always mean those sources; a folder so named
is reached as ./builtin.

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

Weighted mixes. A part may carry a share "@F" (0 < F < 1) of the training characters: "builtin+recall@0.1"
trains on 90% builtin and 10% recall. The parts without a share split the rest equally; the total is set by
the largest of them, whose characters are its share of the total (so it is used once, whole, as in an
unweighted mix). Every part is then filled to its share: its training documents taken whole, in its
shuffled order, repeated or cut, until it holds at least its share (each part overshoots by less than one
of its documents). The held-out documents of a weighted mix are interleaved by the same shares (next from
the source whose held-out characters so far, divided by its share, are fewest; once a source runs out the
others follow), so the first held-out blocks cover every source and weigh them as training does. Shares
summing to 1 or more, a share outside (0, 1), a mix whose every part has a share, or "@F" on a single
source are DataErrors. A part that is an existing path is never read as "path@F".

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
from .recall import RECALL_DOCUMENTS, recall_documents
from .selfgen import self_generated

__all__ = ["Corpus", "DataSpec", "load_corpus", "pack", "is_heldout"]

BUILTIN_DESCRIPTION = "builtin (pydoc_data.topics + stdlib docstrings)"
SELF_SAMPLES = 256  # default number of teacher samples for "self"
SELF_SEED = 0  # the generation seed of "self": fixed, so every seed sees the same documents and split


@dataclass
class DataSpec:
    """Where a Corpus came from and how it was split, for reports (`asdict`-able)."""

    name: str  # the source as given: "builtin", "self", a path or a hub id
    kind: str  # "builtin" | "self" | "recall" | "local" | "saved" | "hub" | "mix"
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
_RECALL = re.compile(r"recall(?::(\d+))?")
_SHARE = re.compile(r"(?P<name>.+)@(?P<share>[^@/\\]*)")  # "source@F": the tail holds no path separator


def _read_source(source: str, tokenizer, model, text_field: str | None, max_documents: int | None,
                 heldout_fraction: float):
    """(documents, held-out documents or None, kind, description) of a source."""
    if source == "builtin":
        return builtin_documents(), None, "builtin", BUILTIN_DESCRIPTION
    if m := _RECALL.fullmatch(source):
        n = int(m.group(1)) if m.group(1) else RECALL_DOCUMENTS
        if n < 1:
            raise DataError(f"--data {source}: recall:N needs N >= 1 documents (e.g. recall:2000)")
        docs = recall_documents(n, heldout_fraction=heldout_fraction)
        return docs, None, "recall", f"recall ({n} synthetic retrieval episodes)"
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
    exists = Path(source).expanduser().exists()
    if len(parts) > 1 and not exists:
        return _mix(source, parts, dict(tokenizer=tokenizer, model=model, seed=seed, heldout_fraction=heldout_fraction,
                                         text_field=text_field, max_documents=max_documents))
    if not exists and (m := _SHARE.fullmatch(source)) and _number(m["share"]) is not None:
        raise DataError(f"--data {source!r}: a share '@F' weighs a part of a mix joined by '+' (e.g. "
                        f"builtin+{source}); for {m['name']} alone use --data {m['name']}")
    docs, held, kind, desc = _read_source(source, tokenizer, model, text_field, max_documents, heldout_fraction)
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


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_mix(source: str, parts: list[str]) -> list[tuple[str, float | None]]:
    """(source, share or None) of each part of the mix `source`, checked (see "Weighted mixes")."""
    parsed: list[tuple[str, float | None]] = []
    for part in (p.strip() for p in parts):
        m = _SHARE.fullmatch(part)
        if not m or Path(part).expanduser().exists():
            parsed.append((part, None))
            continue
        share = _number(m["share"])
        if share is None or not 0 < share < 1:
            raise DataError(f"--data {source!r}: the share of {m['name']!r} must be a number between 0 and 1 "
                            f"(exclusive), the fraction of the training text it gets, e.g. builtin+recall@0.1; "
                            f"got {m['share']!r}")
        parsed.append((m["name"], share))
    names = [n for n, _ in parsed]
    if any(not n for n in names) or len(set(names)) < len(names):
        raise DataError(f"--data {source!r}: a mix names each source once, joined by '+' (e.g. builtin+self:512)")
    shares = [f for _, f in parsed if f is not None]
    if len(shares) == len(parsed):
        raise DataError(f"--data {source!r}: every part of the mix has a share; leave at least one part without "
                        f"'@F' to take the rest of the training text (e.g. builtin+recall@0.1)")
    if sum(shares) >= 1:
        raise DataError(f"--data {source!r}: the shares sum to {sum(shares):g}, leaving nothing for the parts without "
                        f"one; make them sum to less than 1 (e.g. builtin+recall@0.1)")
    return parsed


def _mix(source: str, parts: list[str], kwargs: dict) -> Corpus:
    """The mix `source` = "+".join(parts), each part optionally "name@share" (see the module docstring)."""
    parsed = _parse_mix(source, parts)
    corpora = [load_corpus(name, **kwargs) for name, _ in parsed]
    weighted = any(f is not None for _, f in parsed)
    free = [i for i, (_, f) in enumerate(parsed) if f is None]
    rest = (1 - sum(f for _, f in parsed if f is not None)) / len(free)  # the share of each unweighted part
    shares = [rest if f is None else f for _, f in parsed]
    most = max(corpora[i].spec.train_chars for i in free)  # the largest unweighted part: its share of the total
    total = most / rest
    train: list[str] = []
    for (_, f), c in zip(parsed, corpora):
        target, size = (most if f is None else f * total), 0  # every unweighted part: as large as the largest
        while size < target:  # whole documents, in order, repeated or cut at the part's target
            for d in c.train:
                train.append(d)
                size += len(d)
                if size >= target:
                    break
    random.Random(kwargs["seed"]).shuffle(train)
    if weighted:
        held = _interleave_by_share([c.heldout for c in corpora], shares)
        desc = " + ".join(f"{100 * share:.3g}% {c.source}" for c, share in zip(corpora, shares))
    else:
        held = [c.heldout[i] for i in range(max(len(c.heldout) for c in corpora)) for c in corpora
                if i < len(c.heldout)]
        desc = " + ".join(c.source for c in corpora) + " (equal shares)"
    rules = "; ".join(f"{c.spec.name}: {c.spec.heldout_rule}" for c in corpora)
    spec = DataSpec(name=source, kind="mix", description=desc, heldout_rule=rules, seed=kwargs["seed"],
                    n_train_docs=len(train), n_heldout_docs=len(held), train_chars=sum(map(len, train)),
                    heldout_chars=sum(map(len, held)))
    return Corpus(train=train, heldout=held, source=desc, spec=spec)


def _interleave_by_share(lists: list[list[str]], shares: list[float]) -> list[str]:
    """All documents of `lists`, each list in its order, the next one always taken from the list whose
    characters taken so far divided by its share are fewest (ties: the earlier list)."""
    pos, taken, out = [0] * len(lists), [0] * len(lists), []
    while True:
        open_ = [i for i in range(len(lists)) if pos[i] < len(lists[i])]
        if not open_:
            return out
        i = min(open_, key=lambda j: (taken[j] / shares[j], j))
        out.append(lists[i][pos[i]])
        taken[i] += len(out[-1])
        pos[i] += 1


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
