"""`--data self`: text the teacher writes itself, from a fixed, varied list of prompts (distillation data
that needs no dataset).

`prompts()` crosses 12 instruction templates with 40 topics (480 prompts), interleaved so that any prefix
of the list is varied. Each prompt is wrapped in the tokenizer's chat template when it has one, and the
model samples an answer (temperature 0.8, top-p 0.95, at most `MAX_NEW_TOKENS` = 256 tokens) in
left-padded batches, each batch under its own fixed seed (the caller's torch RNG state is restored). A
document is the prompt, a blank line, then the answer. The texts are cached in
$LIGER_CACHE/selfgen/<key>.jsonl, the key hashing the model (name, config, a fingerprint of its weights),
the tokenizer, the prompts, the generation settings and the seed.
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


def cache_key(model, tokenizer, ps: list[str], max_new_tokens: int, seed: int, batch_size: int) -> str:
    cfg = model.config
    parts = [getattr(cfg, "name_or_path", ""), cfg.to_json_string(use_diff=False), _fingerprint(model),
             getattr(tokenizer, "name_or_path", ""), len(tokenizer), getattr(tokenizer, "chat_template", None),
             ps, max_new_tokens, seed, batch_size, GENERATION]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _read_cache(path: Path, n: int) -> list[str] | None:
    try:
        texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return texts if len(texts) == n else None


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


def self_generated(model, tokenizer, num_samples: int = 256, *, max_new_tokens: int | None = None, seed: int = 0,
                   batch_size: int = 8) -> list[str]:
    """`num_samples` teacher-written documents (prompt, blank line, answer), cached on disk. Prompts are
    reused in order (with fresh samples) when `num_samples` exceeds their number."""
    if model is None or tokenizer is None:
        raise DataError("--data self needs the teacher model and its tokenizer (load_corpus('self', model=..., "
                        "tokenizer=...)); or use --data builtin")
    if num_samples < 1:
        raise DataError(f"--data self needs at least one sample, got {num_samples}")
    max_new_tokens = max_new_tokens or MAX_NEW_TOKENS
    base = prompts()
    ps = [base[i % len(base)] for i in range(num_samples)]
    path = cache_dir() / "selfgen" / f"{cache_key(model, tokenizer, ps, max_new_tokens, seed, batch_size)}.jsonl"
    cached = _read_cache(path, num_samples) if path.is_file() else None
    if cached is not None:
        return cached
    texts: list[str] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    devices = [model.device] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), tqdm(total=num_samples, desc="self-generated data",
                                                          unit="sample") as bar:
            for start in range(0, num_samples, batch_size):
                torch.manual_seed(seed * 1_000_003 + start)  # each batch reproducible on its own
                texts.extend(_generate(model, tokenizer, ps[start : start + batch_size], max_new_tokens))
                bar.update(len(ps[start : start + batch_size]))
    finally:
        tokenizer.padding_side = side
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    os.replace(tmp, path)
    return texts
