"""liger eval and its parts, on tiny models: metrics against hand computations, determinism, lm-eval
offline, the CLI end to end, and its errors."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model

import liger
from liger.cli import main
from liger.evaluate.efficiency import measure
from liger.evaluate.perplexity import compare_lm, perplexity
from liger.evaluate.recall import mqar_probe, passkey_probe
from liger.evaluate.scoring import encode_pair, score_continuations
from liger.evaluate.tasks import Item, cloze_items, continuation_items, score_items

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from liger.teacher import teacher_path

    return AutoTokenizer.from_pretrained(teacher_path())


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("ev")
    teacher = tiny_model("llama", vocab_size=len(tok), max_position_embeddings=1024)
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    student = liger.linearize(tiny_model("llama", vocab_size=len(tok), max_position_embeddings=1024),
                              liger.LigerConfig(window=16))
    student.save_pretrained(root / "student")
    tok.save_pretrained(root / "student")
    return root


def test_perplexity_matches_a_hand_computation():
    model = tiny_model("llama")
    blocks = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = torch.log_softmax(model(blocks).logits[:, :-1].double(), -1)
    nll = -logp.gather(-1, blocks[:, 1:, None]).mean()
    assert perplexity(model, blocks)["perplexity"] == pytest.approx(math.exp(nll.item()), rel=1e-5)
    same = compare_lm(model, model, blocks)
    assert same["top1_agreement"] == 1.0 and abs(same["kl"]) < 1e-6
    other = compare_lm(liger.linearize(tiny_model("llama")), model, blocks)
    assert other["kl"] > 0 and other["top1_agreement"] < 1.0


def test_continuation_scores_equal_direct_log_probs(tok):
    model = tiny_model("llama", vocab_size=len(tok))
    reqs = [encode_pair(tok, "The capital of France is", " Paris"), encode_pair(tok, "One two", " three four five")]
    scores = score_continuations(model, reqs, batch_size=2)
    for (ctx, cont), s in zip(reqs, scores):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        expected = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert s.logprob == pytest.approx(expected, abs=1e-3) and s.n == len(cont)


def test_task_items_are_seeded_and_well_formed():
    texts = [" ".join(f"word{j}x{i} alpha beta gamma delta" for j in range(30)) for i in range(20)]
    a, b = cloze_items(texts, 10, seed=1), cloze_items(texts, 10, seed=1)
    assert a == b and a != cloze_items(texts, 10, seed=2)
    assert all(len(i.choices) == 4 and len(set(i.choices)) == 4 and 0 <= i.label < 4 for i in a)
    cont = continuation_items(texts, 5, seed=0)
    assert len(cont) == 5 and all(len(i.context.split()) == 40 for i in cont)


class _Rigged(torch.nn.Module):
    """A 'model' whose next-token distribution always puts almost all mass on one token id."""

    def __init__(self, vocab: int, favourite: int, boost: float = 20.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.favourite, self.boost = vocab, favourite, boost
        self.config = SimpleNamespace(get_text_config=lambda: SimpleNamespace(max_position_embeddings=4096))

    def forward(self, ids, attention_mask=None, logits_to_keep=0, **kw):
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[..., self.favourite] = self.boost
        return SimpleNamespace(logits=logits[:, logits_to_keep])


def test_multiple_choice_scoring_on_a_rigged_model(tok):
    paris = tok(" Paris", add_special_tokens=False).input_ids
    assert len(paris) == 1
    model = _Rigged(len(tok), paris[0])
    items = [Item("The capital of France is", ("London", "Paris", "Rome", "Berlin"), 1),
             Item("The capital of Italy is", ("Paris", "London", "Rome", "Berlin"), 2)]
    r = score_items(model, tok, items, batch_size=3)
    assert r["predictions"] == [1, 0] and r["acc"] == 0.5 and r["acc_norm"] == 0.5 and r["chance"] == 0.25
    # A uniform model gives every token log(1/V): acc prefers the fewest tokens, acc_norm the fewest tokens
    # per character of the choice (lm-eval's normalisation).
    uniform = _Rigged(len(tok), paris[0], boost=0.0)
    choices = ("cat", "x y z", "extraordinarily", "q")
    n_tok = [len(tok(" " + c, add_special_tokens=False).input_ids) for c in choices]
    r = score_items(uniform, tok, [Item("Say a word:", choices, 2)])
    by_norm = max(range(4), key=lambda i: -n_tok[i] / len(choices[i]))
    assert r["predictions"] == [min(range(4), key=lambda i: n_tok[i])]
    assert r["acc_norm"] == float(by_norm == 2) and by_norm != r["predictions"][0]


def test_mqar_probe_is_seeded_and_spans_hold_the_codes(tok):
    a, b = mqar_probe(tok, 8, seed=1), mqar_probe(tok, 8, seed=1)
    assert a == b and a != mqar_probe(tok, 8, seed=2)
    assert len(a.spans) == 8 and len(set(a.answers)) == 8
    text = tok.decode(a.ids)
    for (s, e), code in zip(a.spans, a.answers):
        assert tok.decode(a.ids[s:e]) == code and text.count(f" {code}.") == 2  # stated once, recalled once
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(a.spans, a.spans[1:]))


def test_passkey_probe_places_the_key(tok):
    for depth in (0.0, 0.5, 1.0):
        probe, info = passkey_probe(tok, 1024, depth, seed=3)
        assert info["tokens"] <= 1024 and info["tokens"] > 900
        text = tok.decode(probe.ids)
        assert text.count(info["key"]) == 3  # twice in the needle, once as the answer
        assert abs(info["needle_depth"] - depth * (info["tokens"] - 60) / info["tokens"]) < 0.1
        s, e = probe.spans[0]
        assert tok.decode(probe.ids[s:e]).strip() == info["key"]


def test_efficiency_rows_and_constant_linear_cache():
    model = liger.linearize(tiny_model("llama"))
    rows = measure({"linearized": model}, [16, 48], (1, 2), decode_tokens=2)
    assert [(r["context"], r["batch"]) for r in rows] == [(16, 1), (16, 2), (48, 1), (48, 2)]
    for r in rows:
        assert r["prefill_s"] > 0 and r["decode_ms"] > 0 and r["decode_tokens"] == 2 and r["model"] == "linearized"
        assert r["peak_rss_bytes"] >= r["peak_extra_bytes"] >= 0 and r["peak_rss_bytes"] > 0
        assert r["cache_bytes"] == r["cache_bytes_per_sequence"] * r["batch"]
    b1 = [r["cache_bytes"] for r in rows if r["batch"] == 1]
    assert len(set(b1)) == 1 and b1[0] == liger.cache.cache_footprint(model)["fixed"]  # constant, as predicted
    soft = measure({"original": tiny_model("llama")}, [16, 48], (1,), decode_tokens=2, warmup=False)
    per_token = liger.cache.cache_footprint(model)["original_per_token"]
    assert [r["cache_bytes"] for r in soft] == [(16 + 2) * per_token, (48 + 2) * per_token]


def test_lm_eval_local_yaml_task_offline(tok, monkeypatch):
    from liger.evaluate.lm_eval_adapter import run_lm_eval

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = liger.linearize(tiny_model("llama", vocab_size=len(tok)))
    res = run_lm_eval(model, tok, ["tests/fixtures/lm_eval/tiny_mc.yaml"], batch_size=4)
    assert set(res) == {"liger_tiny_mc"}
    assert 0.0 <= res["liger_tiny_mc"]["acc"] <= 1.0 and res["liger_tiny_mc"]["sample_len"] == 8


def _eval_args(folders, out, *extra):
    return ["eval", "--model", str(folders / "student"), "--teacher", str(folders / "teacher"), "--out", str(out),
            "--quick", "--recall-lengths", "128,256", "--depths", "0,1", "--lengths", "32,64", "--batch-sizes", "1",
            "--items", "6", "--blocks", "2", "--seq-len", "64", "--quiet", *extra]


def test_cli_end_to_end_and_deterministic(folders, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(_eval_args(folders, tmp_path / "a", "--tasks", "tests/fixtures/lm_eval/tiny_mc.yaml")) == 0
    assert main(_eval_args(folders, tmp_path / "b", "--sections", "lm,tasks,recall")) == 0
    a = json.loads((tmp_path / "a" / "eval.json").read_text())
    b = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert set(a["sections"]) == {"lm", "tasks", "recall", "efficiency", "lm_eval"}
    for key in ("lm", "tasks", "recall"):
        assert a["sections"][key] == b["sections"][key]  # same seed, same numbers
    for png in a["plots"]:
        assert (tmp_path / "a" / png).read_bytes()[:4] == b"\x89PNG"
    assert set(a["plots"]) == {"lm_by_position.png", "lm_positions.png", "passkey_teacher.png",
                               "passkey_linearized.png", "mqar.png", "efficiency.png"}
    md = (tmp_path / "a" / "eval.md").read_text()
    assert "| metric | teacher | linearized | ratio |" in md and "lm-eval liger_tiny_mc" in md
    # out of domain and by position: --quick's 8 OOD blocks and a 2,048-token document, capped at the limit
    lm = a["sections"]["lm"]
    assert lm["ood"]["blocks"] == 8 and lm["ood"]["seq_len"] == 64 and "GNU licence texts" in lm["ood"]["data"]
    assert lm["ood"]["tokens"] == 8 * 63 and 0 <= lm["ood"]["top1_agreement"] <= 1 and lm["ood"]["kl"] > 0
    pos = lm["positions"]
    assert pos["tokens"] == 1024 and pos["buckets"] == [[0, 512], [512, 1024]] and sum(pos["counts"]) == 1023
    assert a["options"]["long_tokens"] == 1024
    metrics = [r["metric"] for r in a["summary"]]
    assert "out-of-domain perplexity" in metrics and "out-of-domain KL(teacher || linearized), nats/token" in metrics
    assert "out-of-domain perplexity at positions 512-1K of a long document" in metrics
    assert "| model | in-domain ppl | in-domain ratio |" in md and "| linearized |" in md and "| 512-1K | 512 |" in md
    assert a["command"].startswith("liger eval --model ") and "--quick" in a["command"] and a["command"] in md
    for png in a["plots"]:
        assert f"]({png})" in md
    eff = a["sections"]["efficiency"]
    assert [(r["context"], r["batch"]) for r in eff["linearized"]] == [(32, 1), (64, 1)]


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--tasks", "no_such_task_xyz"], "unknown lm-eval task"),
        (["--recall-lengths", "4096"], "beyond the model's limit of 1024"),
        (["--sections", "lm,vibes"], "unknown section"),
        (["--lengths", "512,2048"], "--lengths 2048 is beyond the model's limit of 1024"),
        (["--sections", "lm_eval"], "the lm_eval section needs --tasks"),
        (["--depths", "0,1.5"], "--depths must be numbers between 0 and 1"),
    ],
)
def test_cli_errors(folders, tmp_path, capsys, extra, match):
    assert main(_eval_args(folders, tmp_path / "o", *extra)) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_long_document_length_is_capped_or_refused():
    from liger.errors import ConfigError
    from liger.evaluate.runner import EvalOptions, check_options, memory_parts
    from liger.memory_estimate import ModelShape

    assert EvalOptions.quick(model="m").long_tokens == 2048 and EvalOptions(model="m").long_tokens == 8192
    assert check_options(EvalOptions(model="m"), 4096).long_tokens == 4096  # the default is capped
    assert check_options(EvalOptions(model="m", long_tokens=0), 4096).long_tokens == 0  # 0: no long document
    with pytest.raises(ConfigError, match="--long-tokens 8192 is beyond the model's limit of 4096"):
        check_options(EvalOptions(model="m", explicit_lengths=("long_tokens",)), 4096)
    for bad in (dict(long_tokens=-1), dict(ood_blocks=0)):
        with pytest.raises(ConfigError, match="must be >= "):
            check_options(EvalOptions(model="m", **bad), 4096)
    shape = ModelShape(tiny_model("llama", vocab_size=49152).config)
    # the long document keeps both models' logits: 2 x 8192 x V float32 and a few chunks
    parts = memory_parts(EvalOptions(model="m", sections=("lm",), batch_size=1, seq_len=64), shape)
    assert parts["logits"] == pytest.approx((2 * 8192 + 6 * 256) * 49152 * 4)


def test_missing_or_unloadable_model(folders, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--model", str(folders / "teacher")]) == 2
    assert "not a liger checkpoint" in capsys.readouterr().err


def test_refuses_to_replace_a_folder_that_is_not_a_report(folders, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(_eval_args(folders, out, "--sections", "lm")) == 2
    assert "not an eval report" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_sparse_cache_override_and_recall_cache_size(folders, tmp_path, monkeypatch):
    """`liger eval --sparse-cache M` measures the checkpoint with that budget (no retraining); every recall
    report carries the cache bytes it was measured with."""
    monkeypatch.chdir(REPO)
    assert main(_eval_args(folders, tmp_path / "plain", "--sections", "recall")) == 0
    assert main(_eval_args(folders, tmp_path / "sparse", "--sections", "recall", "--sparse-cache", "8")) == 0
    plain, sparse = (json.loads((tmp_path / n / "eval.json").read_text()) for n in ("plain", "sparse"))
    cb_plain, cb_sparse = plain["sections"]["recall"]["cache_bytes"], sparse["sections"]["recall"]["cache_bytes"]
    assert cb_plain["teacher"] == cb_sparse["teacher"] > cb_sparse["linearized"] > cb_plain["linearized"] > 0
    assert sparse["options"]["sparse_cache"] == 8 and plain["options"]["sparse_cache"] is None
    row = next(r for r in sparse["summary"] if r["metric"].startswith("cache MiB at"))
    assert "recall prompts" in row["metric"]
    assert (tmp_path / "sparse" / "eval.md").read_text().count("cache MiB at") >= 1


def test_cli_weights_quantize_the_student_only(folders, tmp_path, monkeypatch):
    """`liger eval --weights int8` measures the int8 student against the float32 teacher: close to the float32
    student's numbers, not equal, and recorded in the options."""
    monkeypatch.chdir(REPO)
    for name, extra in (("f32", ()), ("int8", ("--weights", "int8"))):
        assert main(_eval_args(folders, tmp_path / name, "--sections", "lm", *extra)) == 0
    f32, int8 = (json.loads((tmp_path / n / "eval.json").read_text()) for n in ("f32", "int8"))
    assert int8["options"]["weights"] == "int8" and f32["options"]["weights"] == "float32"
    a, b = f32["sections"]["lm"], int8["sections"]["lm"]
    assert a["teacher"] == b["teacher"]  # the reference is untouched
    assert a["kl"] != b["kl"] and abs(a["kl"] - b["kl"]) < 0.05 * a["kl"] + 1e-3
