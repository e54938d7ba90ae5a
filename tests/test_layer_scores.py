"""`--softmax-layers auto:N`: per-layer scores (restore-one-layer KL and recall, attention-transfer error,
Procrustes similarity), the choice of layers by each --softmax-select rule, and the flags on `liger convert` /
`liger linearize`."""

import copy
import json
import math

import pytest
import torch
from conftest import tiny_model

import liger
from liger.data import load_corpus
from liger.errors import ConfigError
from liger.layer_scores import (SELECT_RULES, check_select, choose_softmax_layers, layer_scores, parse_auto,
                                procrustes_similarity, resolve_auto, scores_markdown, select_softmax_layers)
from liger.layer_selection import RECALL_DEPTHS, kl_layer_scores, recall_layer_scores, recall_probes
from liger.mixers import LigerAttention
from liger.train.job import JobOptions


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
    cfg, scores = choose_softmax_layers(model, ids.split(2), liger.LigerConfig(mixer="gsa"), 2, "transfer")
    cfg2, scores2 = choose_softmax_layers(model, ids.split(2), liger.LigerConfig(mixer="gsa"), 2, "transfer")
    assert cfg.softmax_layers == cfg2.softmax_layers and scores == scores2 and len(cfg.softmax_layers) == 2
    assert [s["layer"] for s in scores] == list(range(5))
    for s in scores:
        assert set(s) == {"layer", "transfer_mse", "transfer_rel", "linearity", "softmax", "rule"}
        assert s["rule"] == "transfer"
        assert s["transfer_mse"] > 0 and -1 <= s["linearity"] <= 1 + 1e-9
    top = sorted(scores, key=lambda s: -s["transfer_mse"])[:2]
    assert set(cfg.softmax_layers) == {s["layer"] for s in top} == {s["layer"] for s in scores if s["softmax"]}
    assert cfg.mixer == "gsa"
    with torch.no_grad():  # the model is left as it was
        assert torch.equal(model(ids).logits, before)
    assert getattr(model.config, "liger", None) is None
    # layers kept by softmax_every are not counted among the N
    cfg3, _ = choose_softmax_layers(model, ids.split(2), liger.LigerConfig(softmax_every=2), 1, "transfer")
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


def _direct_kl(teacher, student, batches) -> float:
    """KL(teacher || student) in nats/token, the mean over every position of `batches`, from the logits."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in batches:
            t = teacher(ids).logits.float().log_softmax(-1)
            s = student(ids).logits.float().log_softmax(-1)
            total += (t.exp() * (t - s)).sum().item()
            count += ids.numel()
    return total / count


def _with_softmax(model, layers, **kw):
    """A linearized copy of `model` with `layers` kept as softmax attention."""
    return liger.linearize(copy.deepcopy(model), liger.LigerConfig(softmax_layers=tuple(layers), **kw))


@pytest.fixture(scope="module")
def kl_case():
    """A tiny model, token batches, and the direct KL of every student with one layer kept softmax."""
    model = tiny_model("qwen3", layers=4, seed=3)
    batches = list(torch.randint(0, 128, (4, 40), generator=torch.Generator().manual_seed(12)).split(2))
    base = _direct_kl(model, _with_softmax(model, [], window=0), batches)
    direct = [_direct_kl(model, _with_softmax(model, [i], window=0), batches) for i in range(4)]
    return model, batches, base, direct


def test_kl_scores_equal_a_direct_computation(kl_case):
    model, batches, base, direct = kl_case
    layers = list(model.model.layers)
    modules = [layer.self_attn for layer in layers]
    with torch.no_grad():
        before = [model(ids).logits for ids in batches]
    model.train()
    rows = kl_layer_scores(model, batches, liger.LigerConfig(window=0))
    assert model.training
    model.eval()
    assert [r["layer"] for r in rows] == [0, 1, 2, 3]
    for r, kl in zip(rows, direct):
        assert set(r) == {"layer", "kl", "kl_drop"}
        assert r["kl"] == pytest.approx(kl, rel=1e-5)
        assert r["kl_drop"] == pytest.approx(base - kl, rel=1e-3, abs=1e-5 * base)
    # the model is left as it was: the same modules, the same logits, not linearized
    assert [layer.self_attn for layer in layers] == modules
    assert not any(isinstance(m, LigerAttention) for m in model.modules())
    assert getattr(model.config, "liger", None) is None
    with torch.no_grad():
        assert all(torch.equal(model(ids).logits, b) for ids, b in zip(batches, before))


def test_kl_top_picks_the_largest_direct_drops(kl_case):
    model, batches, base, direct = kl_case
    drops = [base - kl for kl in direct]
    order = sorted(range(4), key=lambda i: (-drops[i], i))
    assert drops[order[1]] - drops[order[2]] > 1e-3 * base  # the choice is not decided by rounding
    cfg, scores = choose_softmax_layers(model, batches, liger.LigerConfig(window=0), 2)  # kl: the default rule
    assert cfg.softmax_layers == tuple(sorted(order[:2]))
    assert [s["softmax"] for s in scores] == [i in order[:2] for i in range(4)]
    assert all(s["rule"] == "kl" for s in scores)
    assert scores_markdown(scores).startswith(f"KL of the student with every candidate layer linear: {base:.4g}")


def test_kl_greedy_rescores_on_top_of_the_first_pick(kl_case):
    model, batches, base, direct = kl_case
    first = min(range(4), key=lambda i: (direct[i], i))
    rows = kl_layer_scores(model, batches, liger.LigerConfig(window=0), greedy=2)
    assert [r["greedy_step"] for r in rows].count(None) == 2 and rows[first]["greedy_step"] == 1
    assert rows[first]["greedy_drop"] == pytest.approx(base - direct[first], rel=1e-3, abs=1e-5 * base)
    on_top = {j: _direct_kl(model, _with_softmax(model, [first, j], window=0), batches) for j in range(4) if j != first}
    second = min(on_top, key=lambda j: (on_top[j], j))
    assert rows[second]["greedy_step"] == 2
    assert rows[second]["greedy_drop"] == pytest.approx(direct[first] - on_top[second], rel=1e-3, abs=1e-5 * base)
    for r, kl in zip(rows, direct):  # round 1's figures
        assert r["kl"] == pytest.approx(kl, rel=1e-5)
    cfg, scores = choose_softmax_layers(model, batches, liger.LigerConfig(window=0), 2, "kl-greedy")
    assert cfg.softmax_layers == tuple(sorted({first, second}))
    assert "| greedy step | drop at that step |" in scores_markdown(scores)


def test_kl_scores_keep_the_configs_softmax_layers(kl_case):
    model, batches, _, _ = kl_case
    rows = kl_layer_scores(model, batches, liger.LigerConfig(window=0, softmax_layers=(1,)))
    assert rows[1]["kl"] is None and rows[1]["kl_drop"] is None
    base = _direct_kl(model, _with_softmax(model, [1], window=0), batches)
    for i in (0, 2, 3):
        kl = _direct_kl(model, _with_softmax(model, [1, i], window=0), batches)
        assert rows[i]["kl"] == pytest.approx(kl, rel=1e-5)
        assert rows[i]["kl_drop"] == pytest.approx(base - kl, rel=1e-3, abs=1e-5 * base)
    cfg, scores = choose_softmax_layers(model, batches, liger.LigerConfig(window=0, softmax_layers=(1,)), 1)
    assert len(cfg.softmax_layers) == 2 and 1 in cfg.softmax_layers and scores[1]["softmax"]
    with pytest.raises(ConfigError, match="auto:4"):  # 3 layers can be chosen
        choose_softmax_layers(model, batches, liger.LigerConfig(softmax_layers=(1,)), 4)


def test_recall_score_on_a_tiny_model():
    from transformers import AutoTokenizer

    from liger.teacher import teacher_path

    tok = AutoTokenizer.from_pretrained(teacher_path())
    model = tiny_model("llama", layers=2, vocab_size=len(tok), max_position_embeddings=300)
    probes = recall_probes(tok, model)
    assert len(probes) == len(RECALL_DEPTHS) and all(len(p.ids) <= 300 for p in probes)  # capped at the limit
    rows = recall_layer_scores(model, tok, liger.LigerConfig())
    assert [r["layer"] for r in rows] == [0, 1]
    for r in rows:
        assert set(r) == {"layer", "nll", "nll_drop"}
        assert math.isfinite(r["nll"]) and r["nll"] > 0 and math.isfinite(r["nll_drop"])

    def answer_nll(m) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for p in probes:
                logp = m(torch.tensor([p.ids])).logits.float().log_softmax(-1)[0]
                for s, e in p.spans:
                    total -= sum(logp[t - 1, p.ids[t]].item() for t in range(s, e))
                    count += e - s
        return total / count

    base = answer_nll(_with_softmax(model, []))
    for i, r in enumerate(rows):
        nll = answer_nll(_with_softmax(model, [i]))
        assert r["nll"] == pytest.approx(nll, rel=1e-5)
        assert r["nll_drop"] == pytest.approx(base - nll, rel=1e-3, abs=1e-5 * base)
    cfg, scores = choose_softmax_layers(model, [], liger.LigerConfig(), 1, "recall", tokenizer=tok)
    assert cfg.softmax_layers == (max(rows, key=lambda r: (r["nll_drop"], -r["layer"]))["layer"],)
    assert "| layer | answer NLL with it softmax | answer NLL drop | kept as softmax |" in scores_markdown(scores)
    with pytest.raises(ConfigError, match="tokenizer"):
        choose_softmax_layers(model, [], liger.LigerConfig(), 1, "recall")


def test_select_rules_and_fingerprint():
    assert SELECT_RULES == ("kl", "kl-greedy", "recall", "transfer") and JobOptions.softmax_select == "kl"
    with pytest.raises(ConfigError) as err:
        check_select("mse")
    assert all(rule in str(err.value) for rule in SELECT_RULES)
    assert "softmax_select" not in JobOptions().fingerprint()  # no auto:N: the rule is unused
    assert JobOptions(softmax_auto=2).fingerprint()["softmax_select"] == "kl"
    assert JobOptions(softmax_auto=2, softmax_select="kl-greedy").fingerprint()["softmax_select"] == "kl-greedy"
    assert "softmax_select" not in JobOptions(softmax_auto=2, softmax_select="transfer").fingerprint()  # as before
    # --resume: saved scores are reused as they are, with the layers they chose (no model is run)
    saved = [{"layer": i, "rule": "kl", "kl": 1.0, "kl_drop": 0.1, "softmax": i == 2} for i in range(4)]
    cfg, scores = resolve_auto(None, liger.LigerConfig(mixer="gsa"), 1, None, saved, "kl")
    assert cfg.softmax_layers == (2,) and cfg.mixer == "gsa" and scores is saved
    # scores saved before the rules existed are transfer's
    old = [{"layer": 0, "transfer_mse": 1.0, "transfer_rel": 0.5, "linearity": 0.9, "softmax": True}]
    assert scores_markdown(old).startswith("| layer | transfer MSE |")


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
    assert all(s["rule"] == "kl" and math.isfinite(s["kl_drop"]) for s in scores)  # the default rule
    picked = max(scores, key=lambda s: (s["kl_drop"], -s["layer"]))["layer"]
    assert cfg["softmax_layers"] == [picked]

    assert main(["convert", "--model", model, "--out", str(tmp_path / "t"), "--softmax-layers", "auto:1",
                 "--softmax-select", "transfer"]) == 0
    scores = json.loads((tmp_path / "t" / "layer_scores.json").read_text())
    assert all(s["rule"] == "transfer" and s["transfer_mse"] > 0 for s in scores)

    assert main(["linearize", "--model", model, "--data", str(tiny_folder / "data.txt"), "--seq-len", "64",
                 "--eval-blocks", "2", "--max-steps", "2", "--precision", "fp32", "--quiet", "--mixer", "lawcat",
                 "--softmax-layers", "auto:2", "--out", str(tmp_path / "l")]) == 0
    report = json.loads((tmp_path / "l" / "report.json").read_text())
    assert len(report["layer_scores"]) == 4 and len(report["liger"]["softmax_layers"]) == 2
    assert report["liger"]["softmax_layers"] == [s["layer"] for s in report["layer_scores"] if s["softmax"]]
    assert all(s["rule"] == "kl" for s in report["layer_scores"])
    text = (tmp_path / "l" / "report.md").read_text()
    assert "`--softmax-layers auto:N --softmax-select kl`" in text and "| layer | KL with it softmax |" in text
    trained = liger.from_pretrained(tmp_path / "l")
    convs = [p for n, p in trained.named_parameters() if n.endswith("core.conv_q")]
    assert len(convs) == 2 and any(c[:, :-1].abs().sum() > 0 for c in convs)  # trained away from the identity

    assert main(["convert", "--model", model, "--out", str(tmp_path / "x"), "--softmax-layers", "auto:9"]) == 2
