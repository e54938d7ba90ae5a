"""The recipes' building blocks on tiny models: the shared teacher (the student in teacher mode) equals the
original model, alignment lowers every mixer's per-layer error, distillation lowers the KL, budgets split."""

import copy

import pytest
import torch
from conftest import ARCHS, MORE_ARCHS, tiny_model

import liger
from liger.arch import ARCHITECTURES, model_type
from liger.config import MIXERS
from liger.mixers import LigerAttention
from liger.mixers.attention import alignment_error
from liger.train.losses import DistillLoss, attention_transfer_loss
from liger.train.recipes import RecipeOptions, build_stages, trainable_parameters
from liger.train.shared_teacher import SharedTeacher


def _ids(n: int = 48, batch: int = 2, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def _perturb_lora(model: torch.nn.Module) -> None:
    """Make the adapters non-zero (freshly added ones are the identity)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_shared_teacher_is_the_original_model(arch):
    """With adapters that change the student, teacher mode still gives the original model's logits, and the
    student's own modes are restored afterwards."""
    base = tiny_model(arch)
    ids = _ids()
    with torch.no_grad():
        ref = base(ids).logits
    model = liger.linearize(copy.deepcopy(base), liger.LigerConfig(window=8, softmax_layers=[1]))
    stages = build_stages("staged", ARCHITECTURES[model_type(model)], SharedTeacher(model), RecipeOptions())
    model = stages[0].prepare(model)  # adapters on q/k/v of the linearized layers, transfer mode on
    teacher = SharedTeacher(model)
    _perturb_lora(model)
    with torch.no_grad():
        assert (teacher(input_ids=ids, use_cache=False).logits - ref).abs().max() < 1e-4
        assert all(m.transfer and not m.softmax_only for m in model.modules() if isinstance(m, LigerAttention))
        model = stages[0].finish(model)
        assert (model(input_ids=ids).logits - ref).abs().max() > 1e-3  # the student itself differs


def test_shared_teacher_refuses_after_a_merge():
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(window=8))
    stage = build_stages("distill", ARCHITECTURES["llama"], SharedTeacher(model), RecipeOptions())[0]
    model = stage.prepare(model)
    teacher = SharedTeacher(model)
    _perturb_lora(model)
    teacher(input_ids=_ids())
    merged = model.merge_and_unload()
    teacher.set_student(merged)
    with pytest.raises(RuntimeError, match="no longer"):
        teacher(input_ids=_ids())


def test_alignment_mode_feeds_every_layer_the_teachers_inputs():
    base = tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        ref = base(ids).logits
    model = liger.linearize(copy.deepcopy(base), liger.LigerConfig(window=8))
    model = build_stages("align", ARCHITECTURES["llama"], None, RecipeOptions())[0].prepare(model)
    _perturb_lora(model)
    with torch.no_grad():
        assert (model(input_ids=ids).logits - ref).abs().max() < 1e-4


@pytest.mark.parametrize("metric", ["mse", "nmse", "cosine"])
def test_alignment_error_metrics(metric):
    t = torch.randn(2, 5, 3, 4)
    assert float(alignment_error(t, t, metric)) == pytest.approx(0.0, abs=1e-6)
    assert float(alignment_error(2 * t, t, metric)) == pytest.approx(
        {"mse": float(t.pow(2).mean()), "nmse": 1.0, "cosine": 0.0}[metric], rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="unknown alignment metric"):
        alignment_error(t, t, "l1")


def _layer_errors(model, ids) -> list[float]:
    with torch.no_grad():
        attention_transfer_loss(model, ids)
    return [float(m.transfer_loss) for m in model.modules() if isinstance(m, LigerAttention)]


@pytest.mark.parametrize("mixer", MIXERS)
def test_alignment_lowers_every_layers_error(mixer):
    """Each mixer can be aligned: a few steps of the align stage lower the error of every linearized layer on
    held-out inputs (LoRA on q/k/v plus the mixer's own parameters)."""
    torch.manual_seed(0)
    cfg = liger.LigerConfig(mixer=mixer, window=0 if mixer == "native_gdn" else 4,
                            **({"normalize": True} if mixer == "gla" else {}))
    model = liger.linearize(tiny_model("llama"), cfg)
    stage = build_stages("align", ARCHITECTURES["llama"], None, RecipeOptions())[0]
    model = stage.prepare(model)
    params = trainable_parameters(model)
    assert any("lora_" in n for n in params)
    own = [p for m in model.modules() if isinstance(m, LigerAttention) for p in m.own_parameters()]
    assert all(p.requires_grad for p in own)  # the mixer's own parameters (lolcats' maps, lawcat's convs) train
    heldout = _ids(64, 4, seed=1000)
    before = _layer_errors(model, heldout)
    opt = torch.optim.Adam(params.values(), lr=3e-3)
    for step in range(30):
        loss, _ = stage.loss(model, _ids(64, 4, seed=step))  # fresh inputs every step
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _layer_errors(model, heldout)
    assert all(a < b for a, b in zip(after, before)), (before, after)


def test_distill_stage_lowers_the_kl_and_can_mix_cross_entropy():
    torch.manual_seed(0)
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(window=4))
    teacher = SharedTeacher(model)
    stage = build_stages("distill", ARCHITECTURES["llama"], teacher, RecipeOptions(kl_weight=1.0, ce_weight=0.0))[0]
    model = stage.prepare(model)
    ids = _ids(64, 4, seed=3)
    opt = torch.optim.Adam(trainable_parameters(model).values(), lr=1e-2)
    first = None
    for _ in range(20):
        loss, logs = stage.loss(model, ids)
        first = first if first is not None else logs["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) == {"kl"} and logs["kl"] < 0.5 * first
    mixed = DistillLoss(teacher, kl_weight=0.5, ce_weight=2.0)
    loss, logs = mixed(model, ids)
    assert float(loss.detach()) == pytest.approx(2.0 * logs["ce"] + 0.5 * logs["kl"], rel=1e-5)


@pytest.mark.parametrize("opts, match", [
    (RecipeOptions(kl_weight=0.0, ce_weight=0.0), "are both 0"),
    (RecipeOptions(align_metric="l1"), "align_metric"),
    (RecipeOptions(align_fraction=1.0), "align_fraction"),
    (RecipeOptions(kl_weight=float("nan")), "kl_weight"),
])
def test_recipe_options_are_checked(opts, match):
    with pytest.raises(liger.ConfigError, match=match):
        build_stages("staged", ARCHITECTURES["llama"], None, opts)


def test_default_recipe_follows_the_mixer():
    """native_gdn's output gate starts closed: its default recipe is staged (alignment first), from the Python
    API and the command line alike; a recipe given explicitly stays."""
    from liger.cli import build_parser
    from liger.cli.linearize import options_from_args
    from liger.train.job import JobOptions

    assert JobOptions().recipe == "liger"
    assert JobOptions(liger=liger.LigerConfig(mixer="native_gdn")).recipe == "staged"
    assert JobOptions(recipe="liger", liger=liger.LigerConfig(mixer="native_gdn")).recipe == "liger"
    parse = build_parser().parse_args
    assert options_from_args(parse(["linearize", "--mixer", "native_gdn"])).recipe == "staged"
    assert options_from_args(parse(["linearize"])).recipe == "liger"
    assert options_from_args(parse(["linearize", "--mixer", "native_gdn", "--recipe", "distill"])).recipe == "distill"
