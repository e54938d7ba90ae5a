"""Synthetic retrieval episodes as training text: the source "recall" (see `recall_documents`).

Linearized models lose long-range retrieval; these documents let a run train on it, usually as a small share
of a mix (`--data builtin+recall@0.1`). Each document is one complete episode, at most `max_chars`
characters (default 1,800, about 450 tokens, so that it fits in one 512-token training block: an episode cut
in two teaches nothing). Two kinds alternate (document i is kind i % 2):

- passkey: an instruction line naming a fact to look out for ("the locker combination"), filler, a needle
  sentence stating it (a 5-6 digit number, or a 5-character code such as "K7F2Q"), more filler, then a
  question and its answer;
- associative: 3-12 key-value pairs (fewer if max_chars is small) of one family (item -> 3-4 digit
  number, person -> city, person -> occupation), filler, then a random subset of at least half of the keys
  asked again in a shuffled order, each question followed by its answer.

Every wording (instruction, needle, pair, question) is drawn at random from several templates per kind.
Keys and values are distinct within a document; a value appears where it is stated and, if asked, once
more as the answer, nowhere else.

Filler is real prose: runs of consecutive sentences from the training documents of the built-in corpus
(`load_corpus("builtin")` at the same `heldout_fraction`; a sentence that also occurs in a held-out
document is dropped, so no held-out text is copied into training text), keeping only plain sentences
(letters, spaces, commas and semicolons, 40-200 characters, no digits).

No contamination of the evaluation. The recall probes of `liger.data.probes` (passkey retrieval and MQAR,
scored by `liger.evaluate.recall` and `--softmax-layers auto:N`) must stay unseen: no template here
reuses their wording (no phrase of PASSKEY_INTRO, PASSKEY_FILLER, PASSKEY_NEEDLE, PASSKEY_QUESTION,
MQAR_INTRO, MQAR_PAIR, MQAR_RECALL, nor "pass key" or "secret code"), the key vocabularies are disjoint from
MQAR_KEYS, and filler sentences holding one of those phrases, a word of MQAR_KEYS or a word of this
module's own vocabularies are dropped; so no word of MQAR_KEYS appears anywhere in these documents (tests
check all of this).

Deterministic: document i is drawn from `random.Random(f"recall-{seed}-{i}")` alone, so the first k
documents of n are those of k; the filler depends on the Python version (as the built-in corpus does).
Generating 4,000 documents takes about half a second once the built-in corpus is cached.
"""

from __future__ import annotations

import functools
import random
import re
import string
from dataclasses import dataclass

from ..errors import DataError
from . import probes

__all__ = ["Episode", "recall_documents", "recall_episodes", "KEY_VOCABULARY", "RECALL_DOCUMENTS"]

RECALL_DOCUMENTS = 4000  # documents of "recall" without ":N"
MIN_CHARS = 400  # the smallest max_chars that holds an episode with some filler

# ------------------------------------------------------------------------------------------- vocabularies

ITEMS = (
    "anchor compass lantern saddle bottle tunnel feather pebble orchid walnut cactus magnet trophy ribbon "
    "barrel cabinet chimney dolphin parrot lobster beetle hornet raven walrus bison camel donkey ferret gecko "
    "heron jaguar koala lemur moose ostrich panda quail salmon toucan vulture wombat zebra almond apricot "
    "barley cashew fennel lentil olive papaya quince radish saffron turnip acorn bamboo cedar daisy maple "
    "tulip willow canoe wagon rocket sled tractor yacht kayak scooter lighthouse windmill "
    "sundial hourglass telescope microscope thermos umbrella suitcase backpack notebook crayon easel"
).split()
NAMES = (
    "Amara Bruno Chiara Dmitri Elif Farid Greta Hiro Ines Jonas Kavya Lars Mei Nadia Omar Priya Quentin Rosa "
    "Sanjay Tomas Ulla Viktor Wanda Ximena Yusuf Zofia Anika Bastian Carmen Diego Emil Fatima Goran Hana Ivan "
    "Jana Kenji Leila Mateo Noor Oskar Paula Rafael Tariq Vera Yara Zane Linnea Matteo Aiko"
).split()
CITIES = (
    "Lisbon Oslo Nairobi Lima Hanoi Dublin Quito Accra Seoul Vienna Cairo Perth Krakow Bergen Porto Tunis "
    "Kyoto Mumbai Zagreb Riga Tallinn Helsinki Santiago Bogota Havana Dakar Lagos Manila Jakarta Osaka "
    "Geneva Munich Seville Valencia Naples Athens Sofia Montreal Denver Adelaide"
).split()
OCCUPATIONS = (
    "nurse chemist lawyer plumber architect librarian carpenter engineer florist jeweler surgeon mechanic "
    "pharmacist geologist translator electrician dentist journalist accountant veterinarian astronomer "
    "locksmith beekeeper potter"
).split()
KEY_VOCABULARY = frozenset(w.lower() for w in ITEMS + NAMES)  # the keys of the associative episodes

# (article, name) of a passkey fact: numeric facts get 5-6 digit numbers, code facts 5-character codes
NUMBER_FACTS = (("a", "locker combination"), ("a", "ticket number"), ("an", "order number"),
                ("an", "account number"), ("a", "confirmation number"), ("a", "serial number"),
                ("a", "registration number"), ("a", "parcel number"))
CODE_FACTS = (("an", "access code"), ("a", "booking reference"), ("a", "tracking code"), ("a", "voucher code"),
              ("a", "door code"), ("a", "product code"), ("a", "gate code"), ("a", "password"))

# ------------------------------------------------------------------------------------------- templates

PASSKEY_INTROS = (
    "{A} {fact} is mentioned once in the text below. Read carefully: you will be asked for it at the end.",
    "Somewhere in the following passage there is {a} {fact}. Keep it in mind.",
    "The text below hides {a} {fact} among unrelated sentences. Take note of it when you see it.",
    "Read the passage and look out for the {fact}; a question about it follows.",
    "Instructions: find the {fact} in this document and be ready to repeat it.",
)
PASSKEY_NEEDLES = (
    "The {fact} is {value}.",
    "Please note that the {fact} is {value}.",
    "For the record, the {fact} is {value}.",
    "The {fact} you will need later is {value}.",
    "Write this down: the {fact} is {value}.",
    "By the way, {value} is the {fact}.",
)
PASSKEY_QUESTIONS = (  # the answer (the value) follows
    "Question: what is the {fact}? Answer: {value}",
    "What was the {fact} given in the passage? It was {value}.",
    "Q: Which {fact} appeared in the text? A: {value}",
    "The {fact} stated above was {value}.",
    "Recall the {fact} from the passage: {value}",
)

# family -> (keys, value drawer name, intros, (pair, question) templates, question intros)
ASSOCIATIVE_INTROS = {
    "item": ("Each item below has a number. Remember which number goes with which item.",
             "Here is a table of items and their numbers.", "Inventory list:",
             "Study the following assignments of numbers to items."),
    "city": ("Here is where some people live.", "Each person below lives in a different city.",
             "Addresses of the team members:", "Read the list of people and their home towns."),
    "job": ("Here is what some people do for a living.", "Each person below has a different profession.",
            "Staff list with professions:", "Read who does which job."),
}
ASSOCIATIVE_FORMS = {
    "item": (("{k}: {v}", "What number goes with {k}? {v}"),
             ("The number of the {k} is {v}.", "Number of the {k}? {v}."),
             ("Item {k} has number {v}.", "Item {k} had number {v}."),
             ("{k} = {v}", "{k} = {v}")),
    "city": (("{k} lives in {v}.", "Where does {k} live? In {v}."),
             ("{k} moved to {v} last year.", "Which city did {k} move to? {v}."),
             ("{k} was born in {v}.", "{k} was born in {v}."),
             ("{k} - {v}", "{k} - {v}")),
    "job": (("{k} works as {av}.", "What does {k} do? {k} works as {av}."),
            ("{k} is {av}.", "Which job does {k} have? {k} is {av}."),
            ("{k}: {v}", "{k}: {v}"),
            ("The {v} of the group is {k}.", "Who is {k}? The {v} of the group.")),
}
QUESTION_INTROS = ("Now answer from memory.", "Questions:", "Check what you remember.",
                   "Without looking back, answer the following.", "Answers:")


def probe_phrases() -> tuple[str, ...]:
    """The phrases of the evaluation's probe templates (`liger.data.probes`) that no recall document holds:
    every sentence fragment of two words or more of the templates (split at {key} and sentence ends),
    lowercased, plus "pass key" and "secret code"."""
    templates = (probes.PASSKEY_INTRO, probes.PASSKEY_FILLER, probes.PASSKEY_NEEDLE, probes.PASSKEY_QUESTION,
                 probes.MQAR_INTRO, probes.MQAR_PAIR, probes.MQAR_RECALL)
    out = {"pass key", "secret code"}
    for t in templates:
        for frag in re.split(r"\{key\}|(?<=[.?!])\s+|\n", t):
            frag = " ".join(frag.split()).lower()
            if len(frag.split()) >= 2:
                out.add(frag)
    return tuple(sorted(out))


_SPLIT = re.compile(r"(?<=[.!?])\s+")
_PLAIN = re.compile(r"[A-Z][a-z]*(?: [A-Za-z]+[,;]?){5,40}\.")  # letters, spaces, commas, semicolons, a full stop
_WORD = re.compile(r"[A-Za-z]+")


@functools.lru_cache(maxsize=4)
def filler_sentences(heldout_fraction: float = 0.05) -> tuple[str, ...]:
    """Plain sentences of the built-in corpus's training documents (at `heldout_fraction`), in document
    order, without a probe phrase, a word of MQAR_KEYS or a word of this module's vocabularies, and none
    that also occurs in a held-out document (whitespace normalised)."""
    from . import load_corpus  # lazily: liger.data imports this module

    banned = {w.lower() for w in (*probes.MQAR_KEYS, *ITEMS, *NAMES, *CITIES, *OCCUPATIONS)}
    phrases = probe_phrases()
    corpus = load_corpus("builtin", heldout_fraction=heldout_fraction)
    held = "\n".join(" ".join(d.split()) for d in corpus.heldout)
    out: dict[str, None] = {}
    for doc in sorted(corpus.train):  # sorted: independent of the training shuffle
        for para in doc.split("\n\n"):
            if any(line.startswith((" ", "\t", ">>>")) for line in para.split("\n")):
                continue  # code and indented blocks
            for s in _SPLIT.split(" ".join(para.split())):
                if (40 <= len(s) <= 200 and _PLAIN.fullmatch(s)
                        and not {w.lower() for w in _WORD.findall(s)} & banned
                        and not any(p in s.lower() for p in phrases) and s not in held):
                    out[s] = None
    if len(out) < 100:
        raise DataError(f"the built-in corpus gave only {len(out)} filler sentences for --data recall; "
                        "lower heldout_fraction")
    return tuple(out)


# ------------------------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class Episode:
    """A recall document and what it asks: `facts` (key, value) as stated, `asked` the (key, value) pairs
    asked after `questions_at` (the character offset of the first question), in their order. For a passkey
    episode the key is the fact's name ("access code")."""

    text: str
    kind: str  # "passkey" | "associative"
    facts: tuple[tuple[str, str], ...]
    asked: tuple[tuple[str, str], ...]
    questions_at: int


def _filler(rng: random.Random, pool: tuple[str, ...], budget: int) -> list[str]:
    """Consecutive pool sentences from a random start, skipping those that overflow, up to `budget` characters
    (each counted with one separating space)."""
    out: list[str] = []
    i, size = rng.randrange(len(pool)), 0
    for _ in range(200):
        if budget - size < 41:
            break
        s = pool[i % len(pool)]
        if size + len(s) + 1 <= budget:
            out.append(s)
            size += len(s) + 1
        i += 1
    return out


def _code(rng: random.Random) -> str:
    while True:
        c = "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(5))
        if any(ch.isdigit() for ch in c) and any(ch.isalpha() for ch in c):
            return c


def _passkey(rng: random.Random, pool: tuple[str, ...], max_chars: int) -> Episode:
    if rng.random() < 0.5:
        (a, fact), value = rng.choice(NUMBER_FACTS), str(rng.randint(10_000, 999_999))
    else:
        (a, fact), value = rng.choice(CODE_FACTS), _code(rng)
    fill = dict(a=a, A=a.capitalize(), fact=fact, value=value)
    intro = rng.choice(PASSKEY_INTROS).format(**fill)
    needle = rng.choice(PASSKEY_NEEDLES).format(**fill)
    question = rng.choice(PASSKEY_QUESTIONS).format(**fill)
    fixed = len(intro) + 1 + len(needle) + 1 + 1 + len(question)  # intro \n [filler ]needle[ filler] \n question
    budget = int((max_chars - fixed) * rng.uniform(0.6, 1.0))
    filler = _filler(rng, pool, budget)
    at = rng.randint(1, len(filler) - 1) if len(filler) >= 2 else len(filler)
    body = " ".join(filler[:at] + [needle] + filler[at:])
    head = f"{intro}\n{body}\n"
    return Episode(head + question, "passkey", ((fact, value),), ((fact, value),), len(head))


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _associative(rng: random.Random, pool: tuple[str, ...], max_chars: int) -> Episode:
    family = rng.choice(sorted(ASSOCIATIVE_FORMS))
    pair_form, ask_form = rng.choice(ASSOCIATIVE_FORMS[family])
    intro, ask_intro = rng.choice(ASSOCIATIVE_INTROS[family]), rng.choice(QUESTION_INTROS)
    n = rng.randint(3, 12)
    keys = rng.sample(NAMES if family in ("city", "job") else ITEMS, n)
    if family == "item":
        digits = rng.choice((3, 4))
        values = [str(v) for v in rng.sample(range(10 ** (digits - 1), 10**digits), n)]
    else:
        values = rng.sample(CITIES if family == "city" else OCCUPATIONS, n)

    def form(template: str, k: str, v: str) -> str:
        return template.format(k=k, v=v, av=_article(v))

    asked = rng.sample(range(n), rng.randint(max(1, (n + 1) // 2), n))  # a shuffled subset of at least half
    while True:
        pairs = [form(pair_form, k, v) for k, v in zip(keys[:n], values[:n])]
        questions = [form(ask_form, keys[i], values[i]) for i in asked]
        fixed = (len(intro) + 1 + sum(len(p) + 1 for p in pairs) + 1 + len(ask_intro)
                 + sum(len(q) + 1 for q in questions))
        if fixed + 120 <= max_chars or n <= 2:
            break
        n -= 1
        asked = [i for i in asked if i < n] or [0]
    budget = int((max_chars - fixed) * rng.uniform(0.3, 1.0))
    filler = " ".join(_filler(rng, pool, budget))
    head = "\n".join([intro, *pairs, *([filler] if filler else []), ask_intro]) + "\n"
    text = head + "\n".join(questions)
    facts = tuple(zip(keys[:n], values[:n]))
    return Episode(text, "associative", facts, tuple(facts[i] for i in asked), len(head))


KINDS = (_passkey, _associative)


def recall_episodes(n: int, seed: int = 0, max_chars: int = 1800, *,
                    heldout_fraction: float = 0.05) -> list[Episode]:
    """`n` distinct synthetic retrieval episodes (see the module docstring), each at most `max_chars`
    characters, the kinds alternating; filler from the built-in corpus's training side at `heldout_fraction`."""
    if n < 0:
        raise DataError(f"the number of recall documents must be at least 0, got {n}")
    if max_chars < MIN_CHARS:
        raise DataError(f"recall documents need max_chars >= {MIN_CHARS}, got {max_chars}")
    if n == 0:
        return []
    pool = filler_sentences(heldout_fraction)
    out: list[Episode] = []
    seen: set[str] = set()
    for i in range(n):
        for attempt in range(100):
            rng = random.Random(f"recall-{seed}-{i}" + (f"-{attempt}" if attempt else ""))
            ep = KINDS[i % len(KINDS)](rng, pool, max_chars)
            if ep.text not in seen and len(ep.text) <= max_chars:
                break
        else:  # pragma: no cover - 100 collisions in a row cannot happen with these vocabularies
            raise DataError(f"could not draw a new recall document {i}")
        seen.add(ep.text)
        out.append(ep)
    return out


def recall_documents(n: int, seed: int = 0, max_chars: int = 1800, *, heldout_fraction: float = 0.05) -> list[str]:
    """The texts of `recall_episodes(n, seed, max_chars)`: `n` distinct deterministic retrieval documents."""
    return [e.text for e in recall_episodes(n, seed, max_chars, heldout_fraction=heldout_fraction)]
