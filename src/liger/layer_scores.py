"""`--softmax-layers auto:N`: which layers to keep as softmax attention, chosen from data by a rule
(`--softmax-select`, SELECT_RULES), and the per-layer scores behind the choice.

Rules (the N layers chosen are those not already kept by `softmax_layers` / `softmax_every`, which stay
softmax during scoring and are no candidates; ties: the lower index):

- `kl` (default): restore one layer at a time to softmax attention in the all-linear student and keep the N
  whose restoration lowers KL(teacher || student) most (`kl_drop`, nats/token, on held-out token blocks;
  `liger.layer_selection.kl_layer_scores`). One forward per candidate layer per block.
- `kl-greedy`: N rounds of the same; each round keeps its best layer softmax and scores the rest on top of it
  (`greedy_step`, `greedy_drop`).
- `recall`: the same restore-one-layer loop, ranked by the drop of the answer NLL of a few synthetic passkey
  prompts (`nll_drop`; `liger.layer_selection.recall_layer_scores`).
- `transfer`: the N layers with the largest attention-transfer error right after conversion (`layer_scores`
  below; docs/RESULTS.md measured it worse than evenly spaced layers). For every decoder layer, on the same
  token batches:
  - `transfer_mse`: MSE between the mixer's output and the softmax attention's (both [B, T, Hq, D], before
    o_proj), each layer fed the original model's inputs (every layer is wrapped in a `LigerAttention` in
    transfer mode, which outputs the softmax attention and records the MSE), averaged over batches;
    `transfer_rel` is it divided by the mean square of the softmax output (scale-free).
  - `linearity`: Procrustes similarity between the layer's input and output hidden states (tokens x
    hidden), as in "Your Transformer is Secretly Linear" (Razzhigaev et al. 2024): centre both over tokens,
    scale each to unit Frobenius norm, then similarity = 1 - min_R ||X R - Y||_F^2 over orthogonal R
    = 2 ||X^T Y||_* - 1 (nuclear norm, via singular values); 1 when Y is a rotation of X, lower otherwise.

Every score dict carries "layer", "rule", "softmax" (whether the layer stays softmax attention) and the
rule's figures. The model is left as it was (its attention modules are swapped back).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from .arch import ARCHITECTURES, decoder_layers, model_type, supported
from .config import LigerConfig
from .data import load_corpus, pack
from .errors import ConfigError, UnsupportedModelError
from .layer_selection import kl_layer_scores, recall_layer_scores
from .mixers import LigerAttention

Tensor = torch.Tensor

SCORE_BLOCKS = 4  # token blocks scored by `liger convert --softmax-layers auto:N` and `liger linearize`
KL_BLOCKS = 2  # of those, the KL rules read the first 2: 32 forwards of 2 x 512 tokens, ~3 minutes on 2 CPU cores
SCORE_SEQ_LEN = 512
SCORE_BATCH = 2

SELECT_RULES = ("kl", "kl-greedy", "recall", "transfer")  # --softmax-select
DEFAULT_SELECT = "kl"
RANK_KEY = {"kl": "kl_drop", "recall": "nll_drop", "transfer": "transfer_mse"}  # the N largest stay softmax
RULE_TEXT = {  # what the report says of each rule's table
    "kl": "the N layers whose restoration to softmax attention, one at a time in the all-linear student, lowers "
          "KL(teacher || student) most stay softmax; KL in nats/token on the first held-out blocks, which the "
          "in-domain figures also use",
    "kl-greedy": "N greedy rounds: each keeps softmax the layer whose restoration lowers KL(teacher || student) "
                 "most, on top of the earlier picks; KL in nats/token on the first held-out blocks, which the "
                 "in-domain figures also use; KL and KL drop of round 1",
    "recall": "the N layers whose restoration to softmax attention, one at a time in the all-linear student, "
              "lowers the answer NLL of synthetic passkey prompts most stay softmax; NLL in nats/answer token",
    "transfer": "the N layers with the largest attention-transfer MSE stay softmax; linearity: Procrustes "
                "similarity of the layer's input and output",
}


def check_select(rule: str) -> None:
    """ConfigError unless `rule` is one of SELECT_RULES."""
    if rule not in SELECT_RULES:
        raise ConfigError(f"--softmax-select {rule!r} is not a selection rule; choose one of "
                          f"{', '.join(SELECT_RULES)}")


class _Linearity:
    """Running sums over tokens for the Procrustes similarity of x [n, d] and y [n, d] (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.sx = self.sy = self.sxy = None
        self.sxx = self.syy = 0.0

    def add(self, x: Tensor, y: Tensor) -> None:
        x, y = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        if self.sxy is None:
            self.sx, self.sy = x.new_zeros(x.shape[1]), y.new_zeros(y.shape[1])
            self.sxy = x.new_zeros(x.shape[1], y.shape[1])
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.pow(2).sum().item()
        self.syy += y.pow(2).sum().item()
        self.sxy += x.T @ y

    def value(self) -> float:
        if self.n < 2:
            raise ValueError("the Procrustes similarity needs at least 2 tokens")
        cxy = self.sxy - torch.outer(self.sx, self.sy) / self.n
        nx = self.sxx - self.sx.pow(2).sum().item() / self.n
        ny = self.syy - self.sy.pow(2).sum().item() / self.n
        if nx <= 0 or ny <= 0:
            return 1.0 if nx <= 0 and ny <= 0 else 0.0  # a constant maps onto a constant only
        return 2 * torch.linalg.svdvals(cxy).sum().item() / (nx * ny) ** 0.5 - 1


def procrustes_similarity(x: Tensor, y: Tensor) -> float:
    """Procrustes similarity of x and y ([..., d], flattened to tokens x d; see the module docstring):
    1 - min over orthogonal R of ||X R - Y||_F^2 after centring and unit-norm scaling, in [-1, 1]."""
    acc = _Linearity()
    acc.add(x, y)
    return acc.value()


def _hidden(x):
    return x[0] if isinstance(x, tuple) else x


def layer_scores(model: nn.Module, batches: Iterable[Tensor], config: LigerConfig) -> list[dict]:
    """Score every decoder layer of `model` (not linearized) on `batches` (LongTensor [b, T] token ids, no
    padding) for the mixer of `config` (its softmax_layers are ignored). Returns one dict per layer, in
    order: {"layer": i, "transfer_mse", "transfer_rel", "linearity"} (floats; module docstring)."""
    spec = ARCHITECTURES.get(model_type(model))
    if spec is None:
        raise UnsupportedModelError(f"model type {model_type(model)!r} is not supported; liger supports: {supported()}")
    if getattr(model.config, "liger", None) is not None:
        raise ConfigError("layer scores are measured on the original model, before it is linearized")
    layers = decoder_layers(model)
    n = len(layers)
    cfg = dataclasses.replace(config, softmax_layers=(), softmax_every=0)
    device = next(model.parameters()).device
    originals = [layer.self_attn for layer in layers]
    wrappers = []
    for i, attn in enumerate(originals):
        w = LigerAttention(attn, spec, cfg, i)
        w.core.to(device)
        w.transfer = True
        wrappers.append(w)
    mse, target_sq, linear = [0.0] * n, [0.0] * n, [_Linearity() for _ in range(n)]
    count = 0

    def on_o_proj(i):
        def hook(module, args):
            target_sq[i] += args[0].float().pow(2).mean().item()
        return hook

    def on_layer(i):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            linear[i].add(_hidden(x), _hidden(output))
        return hook

    handles = []
    was_training = model.training
    try:
        for layer, w in zip(layers, wrappers):
            layer.self_attn = w
            handles.append(getattr(w, spec.o_proj).register_forward_pre_hook(on_o_proj(w.layer_idx)))
            handles.append(layer.register_forward_hook(on_layer(w.layer_idx), with_kwargs=True))
        model.eval()
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids.to(device), use_cache=False)
                for i, w in enumerate(wrappers):
                    mse[i] += w.transfer_loss.item()
                count += 1
    finally:
        for h in handles:
            h.remove()
        for layer, attn in zip(layers, originals):
            layer.self_attn = attn
        model.train(was_training)
    if count == 0:
        raise ConfigError("layer scores need at least one batch of tokens")
    return [{"layer": i, "transfer_mse": mse[i] / count,
             "transfer_rel": mse[i] / max(target_sq[i], 1e-30),
             "linearity": linear[i].value()} for i in range(n)]


def select_softmax_layers(scores: list[dict], n: int, exclude: Iterable[int] = (), key: str = "transfer_mse"
                          ) -> tuple[int, ...]:
    """The n layers (sorted) with the largest `key` among those not in `exclude` (nor scored None); ties:
    lower index."""
    skip = set(exclude)
    candidates = [s for s in scores if s["layer"] not in skip and s.get(key, 0.0) is not None]
    if not 1 <= n <= len(candidates):
        kept = f", {len(skip)} already kept as softmax" if skip else ""
        raise ConfigError(f"auto:{n} asks for {n} softmax layers, but {len(candidates)} layers can be chosen "
                          f"(the model has {len(scores)}{kept}); choose N from 1 to {len(candidates)}")
    ranked = sorted(candidates, key=lambda s: (-s[key], s["layer"]))
    return tuple(sorted(s["layer"] for s in ranked[:n]))


def choose_softmax_layers(model: nn.Module, batches: Iterable[Tensor], config: LigerConfig, n: int,
                          select: str = DEFAULT_SELECT, *, tokenizer=None, progress: bool = False
                          ) -> tuple[LigerConfig, list[dict]]:
    """Resolve `auto:n` by the rule `select` (module docstring): score the layers on `batches` (LongTensor
    [b, T] token ids; `recall` reads prompts of `tokenizer` instead), keep n more as softmax besides the
    config's own softmax layers and softmax_every. Returns the config to linearize with, and the scores, one
    dict per layer with "rule" and "softmax": whether that layer stays softmax attention."""
    check_select(select)
    num = len(decoder_layers(model))
    config.check_layers(num)
    kept = config.softmax_layer_set(num)
    select_softmax_layers([{"layer": i, "transfer_mse": 0.0} for i in range(num)], n, exclude=kept)  # n fits?
    if select == "recall" and tokenizer is None:
        raise ConfigError("--softmax-select recall scores passkey prompts and needs the model's tokenizer")
    if select == "transfer":
        scores = layer_scores(model, batches, config)
    elif select == "recall":
        scores = recall_layer_scores(model, tokenizer, config, progress=progress)
    else:
        scores = kl_layer_scores(model, batches, config, greedy=n if select == "kl-greedy" else 0,
                                 progress=progress)
    if select == "kl-greedy":
        picked = tuple(sorted(s["layer"] for s in scores if s["greedy_step"] is not None))
    else:
        picked = select_softmax_layers(scores, n, exclude=kept, key=RANK_KEY[select])
    for s in scores:
        s["rule"] = select
        s["softmax"] = s["layer"] in kept or s["layer"] in picked
    chosen = dataclasses.replace(config, softmax_layers=tuple(sorted(set(config.softmax_layers) | set(picked))))
    return chosen, scores


def resolve_auto(model: nn.Module, config: LigerConfig, n: int, blocks: Tensor, scores: list[dict] | None = None,
                 select: str = DEFAULT_SELECT, *, tokenizer=None, progress: bool = False
                 ) -> tuple[LigerConfig, list[dict]]:
    """`--softmax-layers auto:n --softmax-select select` (`liger convert` and `liger linearize`): the config
    to linearize with and the per-layer scores, measured on the first SCORE_BLOCKS of `blocks` ([N, T] token
    ids; held-out blocks for the KL rules, which read only the first KL_BLOCKS, training blocks for `transfer`; `recall` reads passkey prompts of
    `tokenizer`) by `choose_softmax_layers`; `scores` saved by an earlier run of the same job (--resume) are
    reused instead, with the layers they chose."""
    check_select(select)
    if scores is None:
        count = KL_BLOCKS if select.startswith("kl") else SCORE_BLOCKS
        return choose_softmax_layers(model, batches_of(blocks[:count]), config, n, select,
                                     tokenizer=tokenizer, progress=progress)
    kept = tuple(s["layer"] for s in scores if s["softmax"])
    return dataclasses.replace(config, softmax_layers=kept), scores


def parse_auto(text: str) -> int | None:
    """N of "auto:N" (a --softmax-layers value), None for a list of layers."""
    text = text.strip()
    if not text.startswith("auto"):
        return None
    head, _, count = text.partition(":")
    try:
        n = int(count) if head == "auto" else -1
    except ValueError:
        n = -1
    if n < 1:
        raise ConfigError(f"--softmax-layers auto:N takes a number of layers N >= 1, such as auto:4; got {text!r}")
    return n


def batches_of(blocks: Tensor, batch_size: int = SCORE_BATCH) -> list[Tensor]:
    """Token blocks [N, T] as a list of batches [<= batch_size, T]."""
    return list(blocks.split(batch_size))


def builtin_blocks(tokenizer, n: int = SCORE_BLOCKS, seq_len: int = SCORE_SEQ_LEN, heldout: bool = False
                   ) -> Tensor:
    """The first n training (or, with `heldout`, held-out) blocks [n, seq_len] of the built-in corpus (for
    `liger convert`, which has no --data)."""
    corpus = load_corpus("builtin")
    docs, chars = [], 0
    for doc in corpus.heldout if heldout else corpus.train:  # enough text for n blocks (about 8 characters a token, generously)
        docs.append(doc)
        chars += len(doc)
        if chars > 8 * n * seq_len:
            break
    return pack(docs, tokenizer, seq_len)[:n]


def _num(x, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def _kept(score: dict) -> str:
    return "yes" if score.get("softmax") else ""


def scores_markdown(scores: list[dict]) -> str:
    """A markdown table of the per-layer scores, with the columns of their rule (scores saved without a
    "rule" are `transfer`'s); the KL and recall rules add the all-linear student's figure above it."""
    rule = scores[0].get("rule", "transfer") if scores else "transfer"
    if rule == "transfer":
        rows = ["| layer | transfer MSE | relative | linearity | kept as softmax |", "|---|---|---|---|---|"]
        rows += [f"| {s['layer']} | {s['transfer_mse']:.4g} | {s['transfer_rel']:.3f} | {s['linearity']:.4f} | "
                 f"{_kept(s)} |" for s in scores]
        return "\n".join(rows)
    key, what = ("nll", "answer NLL") if rule == "recall" else ("kl", "KL")
    lead = []
    base = next((s[key] + s[f"{key}_drop"] for s in scores if s.get(key) is not None), None)
    if base is not None:
        unit = "nats/answer token" if rule == "recall" else "nats/token"
        lead = [f"{what} of the student with every candidate layer linear: {base:.4g} {unit}", ""]
    greedy = rule == "kl-greedy"
    head = f"| layer | {what} with it softmax | {what} drop |" + (" greedy step | drop at that step |" if greedy else "")
    rows = [head + " kept as softmax |", "|---" * (head.count("|")) + "|"]
    for s in scores:
        row = f"| {s['layer']} | {_num(s[key], '.4g')} | {_num(s[f'{key}_drop'], '.4g')} |"
        if greedy:
            row += f" {_num(s['greedy_step'], 'd')} | {_num(s['greedy_drop'], '.4g')} |"
        rows.append(row + f" {_kept(s)} |")
    return "\n".join(lead + rows)
