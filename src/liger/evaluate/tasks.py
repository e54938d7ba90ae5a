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

_WORD = re.compile(r"[A-Za-z]{3,}")


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
    3+ letters) against `num_choices - 1` other such words of the same document (distinct, case-insensitive).
    At most one item per document, documents visited in a seeded random order."""
    rng = random.Random(f"cloze-{seed}")
    order = list(range(len(texts)))
    rng.shuffle(order)
    items: list[Item] = []
    for d in order:
        if len(items) >= n:
            break
        words = _words(texts[d])
        vocab = sorted({w for w in words if _WORD.fullmatch(w)}, key=str.lower)
        candidates = [i for i in range(context_words, len(words)) if _WORD.fullmatch(words[i])]
        if not candidates:
            continue
        target = rng.choice(candidates)
        answer = words[target]
        others = sorted({w.lower(): w for w in vocab if w.lower() != answer.lower()}.values())
        if len(others) < num_choices - 1:
            continue
        choices = [answer, *rng.sample(others, num_choices - 1)]
        rng.shuffle(choices)
        context = " ".join(words[target - context_words : target])
        items.append(Item(context, tuple(choices), choices.index(answer)))
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
    the continuations of `num_choices - 1` passages from other documents. One passage per document."""
    rng = random.Random(f"continuation-{seed}")
    order = list(range(len(texts)))
    rng.shuffle(order)
    span = context_words + continuation_words
    passages: list[tuple[str, str]] = []
    for d in order:
        words = _words(texts[d])
        if len(words) < span:
            continue
        s = rng.randrange(len(words) - span + 1)
        passages.append((" ".join(words[s : s + context_words]), " ".join(words[s + context_words : s + span])))
    if len(passages) < num_choices:
        return []
    items: list[Item] = []
    for i, (context, answer) in enumerate(passages[:n]):
        pool = [p[1] for j, p in enumerate(passages) if j != i and p[1] != answer]
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
