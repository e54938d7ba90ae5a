"""Layer selection by measured end-to-end effect: restore one layer at a time to softmax attention.

KL-guided layer selection (as in fla-org/hybrid-distillation). On an unconverted model, every candidate layer's
attention is wrapped, for the time of the measurement, in a `LigerAttention` (the all-linear student; layers
the config already keeps as softmax stay the original modules and are no candidates). For each candidate i
the wrapper of layer i is put in teacher mode (`softmax_only`: the host's softmax attention from its own
projections, the original layer) and the student is measured again:

- `kl_layer_scores`: KL(teacher || student) in nats per token, the mean over every position of the given
  token batches, the teacher being the original model (float32 log-probabilities, `use_cache=False`).
  `kl` is the student's KL with layer i restored, `kl_drop` = KL(all linear) - `kl`: how much of the
  student's distance to the teacher that one layer accounts for. Batches are the outer loop (the teacher's
  log-probabilities of one batch [b, T, V] are computed once and compared with every variant), so memory
  holds one batch's log-probabilities, never the whole set's.
  With `greedy` = N rounds: the best layer of a round stays softmax and the others are scored again on top
  of it; each layer records the round that picked it (`greedy_step`, 1-based; None if never picked) and its
  drop in that round (`greedy_drop`). Round 1's figures are the `kl` / `kl_drop` of every layer.
- `recall_layer_scores`: the mean negative log-likelihood (nats per answer token) of the answers of a few
  synthetic passkey prompts (`liger.data.probes`, RECALL_PROBES prompts of RECALL_LENGTH tokens, needles
  at RECALL_DEPTHS): `nll` with layer i restored, `nll_drop` = NLL(all linear) - `nll`.

Cost: one forward per candidate layer per batch (or prompt) and round, plus the teacher's and the
all-linear student's. Layers that are no candidates get None figures. The model is left as it was (its
attention modules are swapped back, its train/eval mode restored, in a `finally`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import ARCHITECTURES, decoder_layers, model_type, supported
from .config import LigerConfig
from .data.probes import Probe, passkey_probe
from .errors import ConfigError, UnsupportedModelError
from .mixers import LigerAttention
from .models import max_positions

Tensor = torch.Tensor

RECALL_LENGTH = 1024  # tokens per passkey prompt of the recall score (capped at the model's context limit)
RECALL_DEPTHS = (0.1, 0.3, 0.5, 0.7)  # needle depths: one prompt each, seeds 0, 1, 2, 3
RECALL_PROBES = len(RECALL_DEPTHS)


class _Restorer:
    """The candidate layers of `model` wrapped in LigerAttention for the time of a `with` block; `teacher()`
    puts the original modules in, `student(restored)` the wrappers, those of `restored` in teacher mode."""

    def __init__(self, model: nn.Module, config: LigerConfig) -> None:
        spec = ARCHITECTURES.get(model_type(model))
        if spec is None:
            raise UnsupportedModelError(f"model type {model_type(model)!r} is not supported; liger supports: "
                                        f"{supported()}")
        if getattr(model.config, "liger", None) is not None:
            raise ConfigError("layer scores are measured on the original model, before it is linearized")
        self.model, self.layers = model, decoder_layers(model)
        n = len(self.layers)
        config.check_layers(n)
        kept = config.softmax_layer_set(n)
        self.candidates = [i for i in range(n) if i not in kept]
        if not self.candidates:
            raise ConfigError(f"the config keeps all {n} layers as softmax attention: no layer is left to score")
        self.originals = {i: layer.self_attn for i, layer in enumerate(self.layers)}
        device = next(model.parameters()).device
        self.device = device
        self.wrappers = {}
        for i in self.candidates:
            w = LigerAttention(self.originals[i], spec, config, i)
            w.core.to(device)
            self.wrappers[i] = w

    def __enter__(self) -> _Restorer:
        self.was_training = self.model.training
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        self.teacher()
        for w in self.wrappers.values():
            w.softmax_only = False
        self.model.train(self.was_training)

    def teacher(self) -> None:
        for i, layer in enumerate(self.layers):
            layer.self_attn = self.originals[i]

    def student(self, restored: Iterable[int] = ()) -> None:
        restored = set(restored)
        for i, w in self.wrappers.items():
            w.softmax_only = i in restored
            self.layers[i].self_attn = w

    def logits(self, ids: Tensor) -> Tensor:
        """float32 logits [b, T, V] of token ids [b, T]."""
        return self.model(input_ids=ids.to(self.device), use_cache=False).logits.float()


# A measure: prepare(restorer, item) -> (score, count): score(logits [b, T, V] float32) is the quantity summed
# over the item's scored positions, count their number; prepare may run the teacher (`teacher_forwards` per item).
Prepare = Callable[["_Restorer", object], tuple[Callable[[Tensor], float], int]]


def _restore_rounds(r: _Restorer, items: Sequence, prepare: Prepare, rounds: int, teacher_forwards: int,
                    progress: bool, desc: str) -> tuple[float, list[dict[int, float]], list[int]]:
    """(the all-linear student's mean, one {layer: mean with that layer restored} per round, the best layer of
    each round). Round k keeps the best layers of rounds 1..k-1 restored (best: the largest drop from the
    round's base, ties: the lower index); its base is the previous round's best figure."""
    if not items:
        raise ConfigError("layer scores need at least one batch of tokens")
    c = len(r.candidates)
    total = len(items) * (rounds * teacher_forwards + 1 + sum(c - k for k in range(rounds)))
    base, results, picks = None, [], []
    with torch.no_grad(), tqdm(total=total, desc=desc, unit="forward", disable=not progress, file=sys.stderr,
                               leave=False) as bar:
        for _ in range(rounds):
            todo = [i for i in r.candidates if i not in picks]
            sums, count, base_sum = dict.fromkeys(todo, 0.0), 0, 0.0
            for item in items:
                score, n = prepare(r, item)
                bar.update(teacher_forwards)
                if base is None:
                    r.student(picks)
                    base_sum += score(r.logits(_ids(item)))
                    bar.update(1)
                for i in todo:
                    r.student([*picks, i])
                    sums[i] += score(r.logits(_ids(item)))
                    bar.update(1)
                count += n
            if base is None:
                base = base_sum / count
            means = {i: v / count for i, v in sums.items()}
            step_base = results[-1][picks[-1]] if picks else base
            results.append(means)
            picks.append(max(todo, key=lambda i: (step_base - means[i], -i)))
    return base, results, picks


def _ids(item) -> Tensor:
    return item if isinstance(item, Tensor) else torch.tensor([item.ids])


def _check_greedy(greedy: int, candidates: int) -> None:
    if not 0 <= greedy <= candidates:
        raise ConfigError(f"greedy selection of {greedy} layers, but {candidates} layers can be chosen; choose "
                          f"from 1 to {candidates}")


def kl_layer_scores(model: nn.Module, batches: Iterable[Tensor], config: LigerConfig, greedy: int = 0,
                    progress: bool = False) -> list[dict]:
    """Restore-one-layer KL scores of every decoder layer of `model` (not linearized) on `batches` (LongTensor
    [b, T] token ids, no padding) for the mixer of `config`, whose softmax layers (softmax_layers,
    softmax_every) stay softmax and are no candidates. Returns one dict per layer, in order: {"layer", "kl",
    "kl_drop"} (floats, nats/token; None for a non-candidate), and with `greedy` = N > 0 also "greedy_step"
    (1..N or None) and "greedy_drop" (module docstring)."""
    batches = list(batches)

    def prepare(r: _Restorer, ids: Tensor):
        r.teacher()
        logp = r.logits(ids).log_softmax(-1)  # [b, T, V] float32, with its probabilities: one batch at a time
        prob = logp.exp()

        def score(logits: Tensor) -> float:  # summed over the batch's tokens
            return (prob * (logp - logits.log_softmax(-1))).sum().item()
        return score, ids.numel()

    with _Restorer(model, config) as r:
        _check_greedy(greedy, len(r.candidates))
        base, rounds, picks = _restore_rounds(r, batches, prepare, max(greedy, 1), 1, progress, "layer scores (kl)")
        return _rows(len(r.layers), base, rounds, picks if greedy else [], "kl")


def recall_probes(tokenizer, model: nn.Module | None = None) -> list[Probe]:
    """The passkey prompts of the recall score: RECALL_PROBES prompts of RECALL_LENGTH tokens (at most the
    model's context limit) with needles at RECALL_DEPTHS, seeds 0, 1, ..."""
    limit = max_positions(model.config) if model is not None else None
    length = min(RECALL_LENGTH, limit or RECALL_LENGTH)
    return [passkey_probe(tokenizer, length, depth, seed=s)[0] for s, depth in enumerate(RECALL_DEPTHS)]


def recall_layer_scores(model: nn.Module, tokenizer, config: LigerConfig, probes: Sequence[Probe] | None = None,
                        progress: bool = False) -> list[dict]:
    """Restore-one-layer recall scores of every decoder layer of `model` (not linearized): the mean NLL of the
    answer tokens of `probes` (default `recall_probes(tokenizer, model)`), one prompt per forward. Returns one
    dict per layer, in order: {"layer", "nll", "nll_drop"} (floats, nats/answer token; None for a layer the
    config keeps as softmax)."""
    probes = list(probes) if probes is not None else recall_probes(tokenizer, model)

    def prepare(r: _Restorer, probe: Probe):
        targets = [(s, e, torch.tensor(probe.ids[s:e])[:, None]) for s, e in probe.spans]

        def score(logits: Tensor) -> float:
            total = 0.0
            for s, e, answer in targets:  # positions s-1 .. e-2 predict the answer tokens s .. e-1
                logp = logits[0, s - 1 : e - 1].log_softmax(-1)
                total -= logp.gather(-1, answer.to(logp.device)).sum().item()
            return total
        return score, sum(e - s for s, e, _ in targets)

    with _Restorer(model, config) as r:
        if not probes:
            raise ConfigError("the recall score needs at least one prompt")
        base, rounds, _ = _restore_rounds(r, probes, prepare, 1, 0, progress, "layer scores (recall)")
        return _rows(len(r.layers), base, rounds, [], "nll")


def _rows(n: int, base: float, rounds: list[dict[int, float]], picks: list[int], key: str) -> list[dict]:
    """One dict per layer from `_restore_rounds`' results (see kl_layer_scores); `picks` of a greedy run."""
    first = rounds[0]
    rows = [{"layer": i, key: first.get(i), f"{key}_drop": base - first[i] if i in first else None}
            for i in range(n)]
    if picks:
        for row in rows:
            row["greedy_step"] = row["greedy_drop"] = None
        step_base = base
        for k, (best, means) in enumerate(zip(picks, rounds)):
            rows[best]["greedy_step"], rows[best]["greedy_drop"] = k + 1, step_base - means[best]
            step_base = means[best]
    return rows
