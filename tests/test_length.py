"""Quality past the training length: a tiny model trained briefly on 64-token sequences must not get worse
further into a 2,048-token sequence (the failure of the unnormalised Liger-GLA branch, whose output grows with
the context: docs/RESULTS.md, "Length")."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

import liger
from liger.arch import ARCHITECTURES
from liger.train.recipes import RecipeOptions, build_stages, trainable_parameters

V = 64
TRAIN_LEN = 64


def copy_task(n: int, batch: int, seed: int) -> torch.Tensor:
    """Random tokens where each token repeats the one two positions back with probability 0.9: a task the
    teacher solves with (local) attention, the same at every position."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (batch, n), generator=g)
    keep = torch.rand(batch, n, generator=g) < 0.9
    for t in range(2, n):
        x[:, t] = torch.where(keep[:, t], x[:, t - 2], x[:, t])
    return x


@pytest.fixture(scope="module")
def teacher():
    """A tiny Llama trained on the copy task (its softmax attention learned to look two tokens back)."""
    torch.manual_seed(0)
    model = tiny_model("llama", layers=2, vocab_size=V).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(160):
        x = copy_task(128, 8, 10_000 + step)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.8  # it learned the task (chance: log 64 = 4.2)
    return model.eval()


def nll_by_bucket(model, buckets) -> list[float]:
    x = copy_task(2048, 2, 999)
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=x).logits.float(), -1)
    nll = -logp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1).mean(0)
    return [float(nll[a:b].mean()) for a, b in buckets]


def linearize_and_train(teacher, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = liger.linearize(copy.deepcopy(teacher), liger.LigerConfig(window=16, **config))
    stage = build_stages("liger", ARCHITECTURES["llama"], None, RecipeOptions())[0]
    model = stage.prepare(model)
    opt = torch.optim.Adam(trainable_parameters(model).values(), lr=1e-2)
    for step in range(30):
        loss, _ = stage.loss(model, copy_task(TRAIN_LEN, 8, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


BUCKETS = [(16, TRAIN_LEN), (256, 1024), (1024, 2047)]


@pytest.mark.parametrize("mixer", ["gla", "hgrn2", "simple_gla", "retention", "gated_deltanet", "lawcat"])
def test_loss_does_not_rise_past_the_training_length(teacher, mixer):
    inside, far, farthest = nll_by_bucket(linearize_and_train(teacher, mixer=mixer), BUCKETS)
    assert far < inside * 1.1 and farthest < inside * 1.1, (inside, far, farthest)


def test_the_length_test_catches_an_unnormalised_branch(teacher):
    """The control: the unnormalised Liger-GLA branch (normalize=False) fails the same check."""
    inside, far, farthest = nll_by_bucket(linearize_and_train(teacher, normalize=False), BUCKETS)
    assert farthest > inside * 1.3, (inside, far, farthest)
