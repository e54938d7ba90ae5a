"""Synthetic recall prompts: passkey retrieval and multi-query associative recall (MQAR) in natural text.

Prompts are token-id sequences assembled from separately encoded pieces, so their lengths are exact; no
special tokens are added. Each `Probe` names the spans of its ids that hold the answers. Leading
whitespace-only tokens of an answer (SmolLM2 encodes " 71432" as " " + five digits) belong to the prompt, not
to the scored span. Scored by `liger.evaluate.recall` (teacher forcing) and by the `recall` rule of
`--softmax-layers auto:N` (`liger.layer_selection`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PASSKEY_INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it."
)
PASSKEY_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = " What is the pass key? The pass key is"

MQAR_INTRO = "Below is a list of secret codes. Memorize them.\n"
MQAR_PAIR = "The code for {key} is"
MQAR_RECALL = "Now recall the codes.\n"
MQAR_KEYS = (
    "apple banana cherry grape lemon mango melon peach pear plum "
    "river ocean forest desert island valley canyon meadow glacier volcano "
    "tiger horse rabbit eagle whale otter badger falcon turtle spider "
    "hammer needle candle mirror ladder bucket basket blanket pillow kettle "
    "violin guitar trumpet piano drum flute harp banjo cello organ "
    "copper silver marble granite velvet cotton leather paper glass rubber "
    "castle bridge tower temple harbor market garden prison palace cottage "
    "winter summer autumn spring thunder rainbow shadow sunrise comet planet "
    "doctor farmer pilot sailor teacher baker tailor singer painter dancer "
    "coffee butter cheese honey pepper ginger garlic onion carrot potato "
    "wallet pocket button zipper helmet jacket sweater scarf glove boot "
    "dragon goblin wizard knight prince queen giant fairy ghost pirate"
).split()


@dataclass(frozen=True)
class Probe:
    """A prompt as token ids and the spans of it that are scored (start, end), with what they encode."""

    ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    answers: tuple[str, ...]


def _enc(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _answer(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(leading whitespace-only tokens, the rest) of the encoding of `text`."""
    ids = _enc(tokenizer, text)
    k = 0
    while k < len(ids) - 1 and not tokenizer.decode(ids[: k + 1]).strip():
        k += 1
    return ids[:k], ids[k:]


def passkey_probe(tokenizer, length: int, depth: float, seed: int = 0) -> tuple[Probe, dict]:
    """A passkey prompt of at most `length` tokens (answer included) with a seeded 5-digit key whose needle
    sentence starts after `round(depth * n)` of the n filler sentences (depth 0: right after the intro, 1:
    right before the question). Returns (probe, info) with info {"key", "tokens", "needle_position",
    "needle_depth"}: the needle's first token index and that index as a fraction of the prompt."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    key = str(random.Random(f"passkey-{seed}-{length}-{depth}").randint(10000, 99999))
    intro, filler = _enc(tokenizer, PASSKEY_INTRO), _enc(tokenizer, PASSKEY_FILLER)
    needle, question = _enc(tokenizer, PASSKEY_NEEDLE.format(key=key)), _enc(tokenizer, PASSKEY_QUESTION)
    lead, answer = _answer(tokenizer, " " + key)
    fixed = len(intro) + len(needle) + len(question) + len(lead) + len(answer)
    n = (length - fixed) // len(filler)
    if n < 1:
        raise ValueError(f"a passkey prompt needs more than {fixed + len(filler)} tokens; got length {length}")
    before = round(depth * n)
    ids = intro + filler * before
    pos = len(ids)
    ids = ids + needle + filler * (n - before) + question + lead
    start = len(ids)
    ids = ids + answer
    info = {"key": key, "tokens": len(ids), "needle_position": pos, "needle_depth": pos / len(ids)}
    return Probe(tuple(ids), ((start, len(ids)),), (key,)), info


def mqar_probe(tokenizer, pairs: int, seed: int = 0) -> Probe:
    """`pairs` lines "The code for <word> is <4-digit number>." (distinct words and numbers, seeded), then
    every word asked again in a shuffled order; each answer number is a scored span."""
    if not 1 <= pairs <= len(MQAR_KEYS):
        raise ValueError(f"MQAR pairs must be between 1 and {len(MQAR_KEYS)}, got {pairs}")
    rng = random.Random(f"mqar-{seed}-{pairs}")
    keys = rng.sample(MQAR_KEYS, pairs)
    values = [str(v) for v in rng.sample(range(1000, 10000), pairs)]
    ids = _enc(tokenizer, MQAR_INTRO)
    for k, v in zip(keys, values):
        ids += _enc(tokenizer, MQAR_PAIR.format(key=k) + f" {v}.\n")
    ids += _enc(tokenizer, MQAR_RECALL)
    order = list(range(pairs))
    rng.shuffle(order)
    spans, answers = [], []
    for i in order:
        lead, answer = _answer(tokenizer, f" {values[i]}")
        ids += _enc(tokenizer, MQAR_PAIR.format(key=keys[i])) + lead
        spans.append((len(ids), len(ids) + len(answer)))
        answers.append(values[i])
        ids += answer + _enc(tokenizer, ".\n")
    return Probe(tuple(ids), tuple(spans), tuple(answers))
