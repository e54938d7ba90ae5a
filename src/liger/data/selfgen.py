"""`--data self`: text the teacher writes itself, from a fixed, varied list of prompts (distillation data
that needs no dataset).

`prompts()` crosses 12 instruction templates with 40 topics (480 prompts), interleaved so that any prefix
of the list is varied; sample i answers prompt i mod 480. Each prompt is wrapped in the tokenizer's chat
template when it has one, and the model samples an answer (temperature 0.8, top-p 0.95, at most
`MAX_NEW_TOKENS` = 256 tokens) in left-padded batches of `BATCH_SIZE` = 64, batch b under its own seed
(the caller's torch RNG state is restored). A document is the prompt, a blank line, then the answer.

Cost: sampling is compute-bound on a CPU: ~100 answer tokens/s at batch 64 on 2 Xeon cores (44 tokens/s at
batch 8, the old default; bf16 weights were no faster), so 512 samples (~110K tokens) take ~19 minutes
once. The texts are cached in $LIGER_CACHE/selfgen/<key>.jsonl, one line per sample, each batch appended
as it completes: a killed generation resumes at its last whole batch, and asking for more samples later
only generates the missing batches. The key hashes the model (name, config, a fingerprint of its
weights), the tokenizer, the prompts, the generation settings, the batch size and the seed, never the
number of samples: sample i is the same text whatever count is asked for (generation always runs whole
batches).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import DataError
from ..teacher import cache_dir

TEMPLATES = [
    "Explain {t} to a beginner.",
    "Write a short story about {t}.",
    "List five interesting facts about {t}.",
    "What are the pros and cons of {t}?",
    "Write a paragraph describing {t}.",
    "Give step-by-step advice about {t}.",
    "Summarize the history of {t}.",
    "Write a friendly email to a colleague about {t}.",
    "What are common misconceptions about {t}?",
    "Write a short dialogue between two friends discussing {t}.",
    "Compare {t} with something similar and explain the differences.",
    "Write three quiz questions about {t}, with answers.",
]
TOPICS = [
    "photosynthesis", "the French Revolution", "prime numbers", "learning a new language", "volcanoes",
    "healthy breakfast ideas", "the Python programming language", "saving money", "the solar system",
    "climate change", "chess openings", "the human heart", "writing a resume", "the Roman Empire",
    "machine learning", "gardening in small spaces", "the water cycle", "public speaking", "black holes",
    "the printing press", "time management", "coffee", "electric cars", "the Olympic Games", "honeybees",
    "sleep", "the internet", "jazz music", "recycling", "mountain hiking", "the moon landing", "friendship",
    "sorting algorithms", "bread baking", "earthquakes", "the stock market", "vaccines", "ancient Egypt",
    "renewable energy", "board games",
]
GENERATION = dict(do_sample=True, temperature=0.8, top_p=0.95, top_k=0)
MAX_NEW_TOKENS = 256
BATCH_SIZE = 64  # measured: ~100 answer tokens/s on 2 cores, 2.3x batch 8


def prompts() -> list[str]:
    """All len(TEMPLATES) * len(TOPICS) template/topic pairs, each once; consecutive prompts differ in both.

    Walks the grid diagonally (template i mod 12, topic i mod 40), which covers lcm(12, 40) = 120 pairs;
    each further lap shifts the topic by one, and the 4 laps together cover all 480 pairs."""
    n_t, n_p = len(TEMPLATES), len(TOPICS)
    lap = n_t * n_p // math.gcd(n_t, n_p)
    return [TEMPLATES[i % n_t].format(t=TOPICS[(i + i // lap) % n_p]) for i in range(n_t * n_p)]


def _fingerprint(model) -> str:
    """A cheap fingerprint of the weights: the float64 sum and first values of every parameter."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            total = p.detach().sum(dtype=torch.float64).item()
            h.update(f"{name}:{tuple(p.shape)}:{total:.10e}:{p.detach().reshape(-1)[:8].tolist()}".encode())
    return h.hexdigest()


def cache_key(model, tokenizer, max_new_tokens: int, seed: int, batch_size: int) -> str:
    """The cache file's name: everything that decides sample i's text, but not how many samples are asked for."""
    cfg = model.config
    parts = [getattr(cfg, "name_or_path", ""), cfg.to_json_string(use_diff=False), _fingerprint(model),
             getattr(tokenizer, "name_or_path", ""), len(tokenizer), getattr(tokenizer, "chat_template", None),
             prompts(), max_new_tokens, seed, batch_size, GENERATION]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _read_cache(path: Path, batch_size: int) -> list[str]:
    """The whole batches stored in `path` (a line cut short by a kill, and any incomplete batch, dropped)."""
    texts: list[str] = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            texts.append(json.loads(line)["text"])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):
        pass  # keep what parsed before the damage
    return texts[: len(texts) - len(texts) % batch_size]


def _generate(model, tokenizer, batch: list[str], max_new_tokens: int) -> list[str]:
    chat = bool(getattr(tokenizer, "chat_template", None))
    inputs = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                            add_generation_prompt=True) if chat else p for p in batch]
    enc = tokenizer(inputs, return_tensors="pt", padding=True, add_special_tokens=not chat).to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad, **GENERATION)
    answers = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [f"{p}\n\n{a.strip()}" for p, a in zip(batch, answers)]


def _jsonl(texts: list[str]) -> str:
    """The cache file's lines for `texts`: one {"text": ...} JSON object per line."""
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)


def self_generated(model, tokenizer, num_samples: int = 256, *, max_new_tokens: int | None = None, seed: int = 0,
                   batch_size: int | None = None) -> list[str]:
    """`num_samples` teacher-written documents (prompt, blank line, answer), cached on disk (see the module
    docstring). Prompts are reused in order (with fresh samples) when `num_samples` exceeds their number."""
    if model is None or tokenizer is None:
        raise DataError("--data self needs the teacher model and its tokenizer (load_corpus('self', model=..., "
                        "tokenizer=...)); or use --data builtin")
    if num_samples < 1:
        raise DataError(f"--data self needs at least one sample, got {num_samples}")
    max_new_tokens = max_new_tokens or MAX_NEW_TOKENS
    batch_size = batch_size or BATCH_SIZE
    base = prompts()
    path = cache_dir() / "selfgen" / f"{cache_key(model, tokenizer, max_new_tokens, seed, batch_size)}.jsonl"
    texts = _read_cache(path, batch_size)
    if len(texts) >= num_samples:
        return texts[:num_samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Rewrite what was read (drops a torn tail) before appending, atomically.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(_jsonl(texts), encoding="utf-8")
    os.replace(tmp, path)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    devices = [model.device] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), tqdm(total=num_samples, initial=len(texts), unit="sample",
                                                          desc="self-generated data") as bar, \
                path.open("a", encoding="utf-8") as f:
            while len(texts) < num_samples:
                start = len(texts)
                torch.manual_seed(seed * 1_000_003 + start)  # each batch reproducible on its own
                batch = _generate(model, tokenizer, [base[(start + i) % len(base)] for i in range(batch_size)],
                                  max_new_tokens)
                f.write(_jsonl(batch))
                f.flush()
                texts.extend(batch)
                bar.update(min(batch_size, num_samples - start))
    finally:
        tokenizer.padding_side = side
    return texts[:num_samples]
