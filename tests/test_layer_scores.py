"""`--softmax-layers auto:N`: per-layer scores (attention-transfer error, Procrustes similarity), the choice of
layers, and the flag on `liger convert` / `liger linearize`."""

import json

import pytest
import torch
from conftest import tiny_model

import liger
from liger.data import load_corpus
from liger.errors import ConfigError
from liger.layer_scores import (choose_softmax_layers, layer_scores, parse_auto, procrustes_similarity,
                                select_softmax_layers)


def test_procrustes_similarity():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(400, 24, generator=gen)
    rot, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen))
    assert procrustes_similarity(x, 2.5 * x @ rot + 1.0) == pytest.approx(1.0, abs=1e-9)  # rotation, scale, shift
    assert procrustes_similarity(x, torch.tanh(2 * x) ** 2) < 0.9
    assert procrustes_similarity(x, torch.randn(400, 24, generator=gen)) < 0.5
    # tokens x d from any leading shape, e.g. hidden states [B, T, d]
    assert procrustes_similarity(x.view(4, 100, 24), x.view(4, 100, 24)) == pytest.approx(1.0, abs=1e-9)


def test_auto_picks_n_layers_deterministically():
    model = tiny_model("llama", layers=5)
    ids = torch.randint(0, 128, (4, 48), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        before = model(ids).logits
    cfg, scores = choose_softmax_layers(model, ids.split(2), liger.LigerConfig(mixer="gsa"), 2)
    cfg2, scores2 = choose_softmax_layers(model, ids.split(2), liger.LigerConfig(mixer="gsa"), 2)
    assert cfg.softmax_layers == cfg2.softmax_layers and scores == scores2 and len(cfg.softmax_layers) == 2
    assert [s["layer"] for s in scores] == list(range(5))
    for s in scores:
        assert set(s) == {"layer", "transfer_mse", "transfer_rel", "linearity", "softmax"}
        assert s["transfer_mse"] > 0 and -1 <= s["linearity"] <= 1 + 1e-9
    top = sorted(scores, key=lambda s: -s["transfer_mse"])[:2]
    assert set(cfg.softmax_layers) == {s["layer"] for s in top} == {s["layer"] for s in scores if s["softmax"]}
    assert cfg.mixer == "gsa"
    with torch.no_grad():  # the model is left as it was
        assert torch.equal(model(ids).logits, before)
    assert getattr(model.config, "liger", None) is None
    # layers kept by softmax_every are not counted among the N
    cfg3, _ = choose_softmax_layers(model, ids.split(2), liger.LigerConfig(softmax_every=2), 1)
    assert len(cfg3.softmax_layer_set(5)) == 3 and {1, 3} <= cfg3.softmax_layer_set(5)
    liger.linearize(model, cfg)
    assert [type(layer.self_attn).__name__ == "LigerAttention" for layer in model.model.layers].count(False) == 2


def test_layer_scores_use_the_transfer_error():
    """transfer_mse is the mean MSE of LigerAttention's attention transfer; a layer whose mixer equals the
    softmax attention would score 0."""
    model = tiny_model("qwen3", layers=2)
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(11))
    scores = layer_scores(model, [ids], liger.LigerConfig(window=64))  # window >= T: the mix is 0.5 SWA + 0.5 GLA
    lin = layer_scores(model, [ids], liger.LigerConfig(window=0))
    for a, b in zip(scores, lin):
        assert 0 < a["transfer_mse"] < b["transfer_mse"]  # half the output is exact with the window
        assert a["transfer_mse"] == pytest.approx(b["transfer_mse"] / 4, rel=1e-4)  # (0.5 * error)^2
        assert a["linearity"] == pytest.approx(b["linearity"], abs=1e-12)


def test_auto_parsing_and_errors():
    assert parse_auto("auto:3") == 3 and parse_auto("0,5") is None
    for bad in ("auto", "auto:0", "auto:x", "automatic:2"):
        with pytest.raises(ConfigError, match="auto:N"):
            parse_auto(bad)
    scores = [{"layer": i, "transfer_mse": m} for i, m in enumerate([1.0, 3.0, 3.0, 0.5])]
    assert select_softmax_layers(scores, 2) == (1, 2)
    assert select_softmax_layers(scores, 2, exclude=[2]) == (0, 1)
    with pytest.raises(ConfigError, match="auto:5"):
        select_softmax_layers(scores, 5)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from transformers import AutoTokenizer

    from liger.teacher import teacher_path

    root = tmp_path_factory.mktemp("auto")
    tok = AutoTokenizer.from_pretrained(teacher_path())
    tiny_model("llama", layers=4, vocab_size=len(tok)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "data.txt").write_text("\n\n".join(load_corpus("builtin").train[:200]))
    return root


def test_cli_convert_and_linearize_with_auto(tiny_folder, tmp_path):
    from liger.cli import main

    model = str(tiny_folder / "model")
    assert main(["convert", "--model", model, "--out", str(tmp_path / "c"), "--mixer", "gated_deltanet",
                 "--negative-eigen", "--softmax-layers", "auto:1"]) == 0
    scores = json.loads((tmp_path / "c" / "layer_scores.json").read_text())
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())["liger"]
    assert len(scores) == 4 and cfg["softmax_layers"] == [s["layer"] for s in scores if s["softmax"]]
    assert len(cfg["softmax_layers"]) == 1 and cfg["delta_negative_eigen"] and cfg["mixer"] == "gated_deltanet"

    assert main(["linearize", "--model", model, "--data", str(tiny_folder / "data.txt"), "--seq-len", "64",
                 "--eval-blocks", "2", "--max-steps", "2", "--precision", "fp32", "--quiet", "--mixer", "lawcat",
                 "--softmax-layers", "auto:2", "--out", str(tmp_path / "l")]) == 0
    report = json.loads((tmp_path / "l" / "report.json").read_text())
    assert len(report["layer_scores"]) == 4 and len(report["liger"]["softmax_layers"]) == 2
    assert report["liger"]["softmax_layers"] == [s["layer"] for s in report["layer_scores"] if s["softmax"]]
    assert "| layer | transfer MSE |" in (tmp_path / "l" / "report.md").read_text()
    trained = liger.from_pretrained(tmp_path / "l")
    convs = [p for n, p in trained.named_parameters() if n.endswith("core.conv_q")]
    assert len(convs) == 2 and any(c[:, :-1].abs().sum() > 0 for c in convs)  # trained away from the identity

    assert main(["convert", "--model", model, "--out", str(tmp_path / "x"), "--softmax-layers", "auto:9"]) == 2
