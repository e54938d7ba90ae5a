"""Offline zero-shot multiple-choice tasks built from held-out text, scored as lm-eval scores multiple choice.

- cloze: a passage and candidate last words; the true next word against distractor words of the same
  document (a LAMBADA-like probe of using the context).
- continuation: a passage and four candidate continuations; the true one against the continuations of
  other passages (a HellaSwag-like probe).

Text is whitespace-normalised (runs of spaces and newlines become one space) before items are cut, so items
read as plain prose whatever the source. Items depend only on the texts, the seed and the sizes.
Scoring: each choice is the continuation " " + choice after the context; `acc` takes the choice with the
highest summed log-likelihood, `acc_norm` the highest log-likelihood per character of the choice (lm-eval's
acc_norm, which divides by the character length of the choice).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from .scoring import encode_pair, score_continuations

_WORD = re.compile(r"[A-Za-z]{4,}")


@dataclass(frozen=True)
class Item:
    """One multiple-choice question: the model reads `context`, then each of `choices` (with a space
    between); `label` is the index of the true choice."""

    context: str
    choices: tuple[str, ...]
    label: int


def _words(text: str) -> list[str]:
    return text.split()


def cloze_items(
    texts: Sequence[str], n: int, seed: int = 0, context_words: int = 48, num_choices: int = 4
) -> list[Item]:
    """Up to `n` last-word cloze items: `context_words` words of a document, then its next word (alphabetic,
    4+ letters) against `num_choices - 1` other such words of the same document (distinct, case-insensitive).
    Passages do not overlap; they are drawn from all documents in a seeded random order."""
    rng = random.Random(f"cloze-{seed}")
    candidates: list[tuple[int, int]] = []  # (document, index of the target word)
    for d, text in enumerate(texts):
        words, free = _words(text), 0
        for i in range(context_words, len(words)):
            if i - context_words >= free and _WORD.fullmatch(words[i]):
                candidates.append((d, i))
                free = i + 1
    rng.shuffle(candidates)
    items: list[Item] = []
    vocab: dict[int, list[str]] = {}
    for d, target in candidates:
        if len(items) >= n:
            break
        words = _words(texts[d])
        if d not in vocab:
            vocab[d] = sorted({w.lower(): w for w in words if _WORD.fullmatch(w)}.values())
        answer = words[target]
        others = [w for w in vocab[d] if w.lower() != answer.lower()]
        if len(others) < num_choices - 1:
            continue
        choices = [answer, *rng.sample(others, num_choices - 1)]
        rng.shuffle(choices)
        items.append(Item(" ".join(words[target - context_words : target]), tuple(choices), choices.index(answer)))
    return items


def continuation_items(
    texts: Sequence[str],
    n: int,
    seed: int = 0,
    context_words: int = 40,
    continuation_words: int = 12,
    num_choices: int = 4,
) -> list[Item]:
    """Up to `n` items: `context_words` words of a document and its next `continuation_words` words, against
    the continuations of `num_choices - 1` passages of other documents (of other passages if there is only one
    document). Passages do not overlap; they are drawn from all documents in a seeded random order."""
    rng = random.Random(f"continuation-{seed}")
    span = context_words + continuation_words
    passages: list[tuple[int, str, str]] = []  # (document, context, continuation)
    for d, text in enumerate(texts):
        words = _words(text)
        for s in range(0, len(words) - span + 1, span):
            cut = s + context_words
            passages.append((d, " ".join(words[s:cut]), " ".join(words[cut : s + span])))
    rng.shuffle(passages)
    items: list[Item] = []
    for i, (d, context, answer) in enumerate(passages[:n]):
        pool = [p[2] for j, p in enumerate(passages) if p[0] != d and p[2] != answer]
        if len(pool) < num_choices - 1:
            pool = [p[2] for j, p in enumerate(passages) if j != i and p[2] != answer]
        if len(pool) < num_choices - 1:
            break
        choices = [answer, *rng.sample(pool, num_choices - 1)]
        rng.shuffle(choices)
        items.append(Item(context, tuple(choices), choices.index(answer)))
    return items


def score_items(
    model: nn.Module,
    tokenizer,
    items: Sequence[Item],
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """{"acc", "acc_norm", "chance", "n", "predictions": [choice index by acc]} of `model` on `items`.
    chance = mean of 1 / number of choices."""
    requests = [encode_pair(tokenizer, item.context, " " + c) for item in items for c in item.choices]
    scores = score_continuations(model, requests, batch_size=batch_size, on_batch=on_batch)
    acc = acc_norm = 0
    preds: list[int] = []
    pos = 0
    for item in items:
        lps = [s.logprob for s in scores[pos : pos + len(item.choices)]]
        pos += len(item.choices)
        normed = [lp / len(c) for lp, c in zip(lps, item.choices)]
        pred = max(range(len(lps)), key=lps.__getitem__)
        preds.append(pred)
        acc += pred == item.label
        acc_norm += max(range(len(normed)), key=normed.__getitem__) == item.label
    n = len(items)
    return {
        "acc": acc / n if n else float("nan"),
        "acc_norm": acc_norm / n if n else float("nan"),
        "chance": sum(1 / len(i.choices) for i in items) / n if n else float("nan"),
        "n": n,
        "predictions": preds,
    }


def num_requests(items: Sequence[Item]) -> int:
    return sum(len(i.choices) for i in items)
