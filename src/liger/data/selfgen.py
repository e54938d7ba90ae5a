"""`--data self`: text the teacher writes itself, from a fixed, varied list of prompts (distillation data
that needs no dataset). Generated once with a fixed seed and cached under $LIGER_CACHE/selfgen/."""

from __future__ import annotations

import hashlib
import json
import os

import torch
from tqdm.auto import tqdm

from ..errors import DataError
from ..teacher import cache_dir

TASKS = [
    "Explain {t} to a beginner.",
    "Write a short story about {t}.",
    "List five facts about {t}.",
    "What are the pros and cons of {t}?",
    "Write a paragraph describing {t}.",
    "Give step-by-step advice about {t}.",
    "Summarize the history of {t}.",
    "Write a friendly email about {t}.",
]
TOPICS = [
    "photosynthesis", "the French Revolution", "prime numbers", "learning a new language", "volcanoes",
    "healthy breakfast ideas", "the Python programming language", "saving money", "the solar system",
    "climate change", "chess openings", "the human heart", "writing a resume", "the Roman Empire",
    "machine learning", "gardening in small spaces", "the water cycle", "public speaking", "black holes",
    "the printing press", "time management", "coffee", "electric cars", "the Olympic Games", "honeybees",
    "sleep", "the internet", "jazz music", "recycling", "mountain hiking", "the moon landing", "friendship",
]


def prompts() -> list[str]:
    """len(TASKS) * len(TOPICS) prompts, interleaved so that any prefix is varied."""
    return [TASKS[i % len(TASKS)].format(t=TOPICS[(i // len(TASKS) + i) % len(TOPICS)])
            for i in range(len(TASKS) * len(TOPICS))]


def self_generated(model, tokenizer, num_samples: int = 256, max_new_tokens: int = 256, seed: int = 0,
                   batch_size: int = 8) -> list[str]:
    """`num_samples` teacher completions (prompt + answer as one document), cached on disk."""
    if model is None or tokenizer is None:
        raise DataError("--data self needs the teacher model and its tokenizer")
    ps = prompts()[:num_samples]
    if len(ps) < num_samples:
        ps = [ps[i % len(ps)] for i in range(num_samples)]
    key = hashlib.sha256(json.dumps([
        getattr(model.config, "name_or_path", ""), model.config.to_json_string(), ps, max_new_tokens, seed,
    ]).encode()).hexdigest()[:16]
    path = cache_dir() / "selfgen" / f"{key}.jsonl"
    if path.is_file():
        return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    chat = bool(getattr(tokenizer, "chat_template", None))
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = []
    gen = torch.Generator().manual_seed(seed)
    try:
        for i in tqdm(range(0, len(ps), batch_size), desc="self-generated data", unit="batch"):
            batch = ps[i : i + batch_size]
            inputs = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                    add_generation_prompt=True) if chat else p for p in batch]
            enc = tokenizer(inputs, return_tensors="pt", padding=True, add_special_tokens=not chat)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8,
                                     top_p=0.95, top_k=0, pad_token_id=pad)
            for p, row in zip(batch, out[:, enc.input_ids.shape[1]:]):
                texts.append(p + "\n\n" + tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    os.replace(tmp, path)
    return texts
