"""Quality off the training domain and by position (liger.evaluate.quality) against a slow reference, and the
out-of-domain texts (liger.data.ood): shipped, split without overlap, never in the built-in corpus."""

import math
import re
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

import liger
import liger.evaluate.perplexity as perplexity_mod
from liger.data.ood import (BLOCK_NAMES, LONG_NAMES, OOD_DESCRIPTION, ood_documents, ood_eval_data,
                            ood_long_document, ood_split)
from liger.evaluate.quality import (POSITION_BUCKETS, bucket_label, position_buckets, position_plot, quality,
                                    quality_markdown)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from liger.teacher import teacher_path

    return AutoTokenizer.from_pretrained(teacher_path())


@pytest.fixture(scope="module")
def pair():
    teacher = tiny_model("llama", layers=2)
    student = liger.linearize(tiny_model("llama", layers=2), liger.LigerConfig(window=8))
    return student, teacher


def _reference(student, teacher, ids: torch.Tensor):
    """Float64 per-token NLL of both models, KL(teacher || student) and argmax agreement from full logits."""
    with torch.no_grad():
        lt = torch.log_softmax(teacher(ids).logits[:, :-1].double(), -1)
        ls = torch.log_softmax(student(ids).logits[:, :-1].double(), -1)
    target = ids[:, 1:, None]
    return (-lt.gather(-1, target)[..., 0], -ls.gather(-1, target)[..., 0], (lt.exp() * (lt - ls)).sum(-1),
            lt.argmax(-1) == ls.argmax(-1))


def test_quality_matches_a_slow_reference(pair, monkeypatch):
    student, teacher = pair
    monkeypatch.setattr(perplexity_mod, "CHUNK", 7)  # several chunks per row, a partial last one
    g = torch.Generator().manual_seed(0)
    sets = {"a": torch.randint(0, 128, (3, 20), generator=g), "b": torch.randint(0, 128, (2, 33), generator=g)}
    long_ids = torch.randint(0, 128, (1, 1500), generator=g)
    q = quality(student, teacher, sets, long_ids, batch_size=2)
    for name, blocks in sets.items():
        nt, ns, kl, agree = _reference(student, teacher, blocks)
        r = q["sets"][name]
        assert r["tokens"] == blocks.shape[0] * (blocks.shape[1] - 1)
        assert r["teacher_ppl"] == pytest.approx(math.exp(nt.mean().item()), rel=1e-5)
        assert r["student_ppl"] == pytest.approx(math.exp(ns.mean().item()), rel=1e-5)
        assert r["ratio"] == pytest.approx(r["student_ppl"] / r["teacher_ppl"])
        assert r["kl"] == pytest.approx(kl.mean().item(), rel=1e-4) and r["kl"] > 0
        assert r["top1"] == pytest.approx(agree.double().mean().item())
    pos = q["positions"]
    assert pos["buckets"] == [[0, 512], [512, 1024], [1024, 1500]] and pos["tokens"] == 1500
    assert pos["counts"] == [511, 512, 476] and sum(pos["counts"]) == 1499
    nt, ns, kl, agree = _reference(student, teacher, long_ids)
    for i, (a, b) in enumerate(pos["buckets"]):
        sl = slice(max(a - 1, 0), b - 1)  # prediction i is of token i + 1
        assert pos["teacher_ppl"][i] == pytest.approx(math.exp(nt[0, sl].mean().item()), rel=1e-5)
        assert pos["student_ppl"][i] == pytest.approx(math.exp(ns[0, sl].mean().item()), rel=1e-5)
        assert pos["kl"][i] == pytest.approx(kl[0, sl].mean().item(), rel=1e-4)
        assert pos["top1"][i] == pytest.approx(agree[0, sl].double().mean().item())
        assert pos["ratio"][i] == pytest.approx(pos["student_ppl"][i] / pos["teacher_ppl"][i])


class _Wrapper(torch.nn.Module):
    """A teacher that is a thin module around the student (same parameters, same config)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, **kw):
        return self.inner(**kw)


def test_student_equal_to_teacher_gives_kl_zero_and_full_agreement(pair):
    student, _ = pair
    student.train()  # quality evaluates in eval mode and restores the flags
    blocks = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    for teacher in (student, _Wrapper(student)):
        q = quality(student, teacher, {"x": blocks}, blocks[:1], batch_size=1)
        r = q["sets"]["x"]
        assert abs(r["kl"]) < 1e-6 and r["top1"] == 1.0 and r["teacher_ppl"] == r["student_ppl"]
        assert r["ratio"] == 1.0
        pos = q["positions"]
        assert pos["buckets"] == [[0, 40]] and pos["counts"] == [39] and pos["top1"] == [1.0]
        assert abs(pos["kl"][0]) < 1e-6 and pos["teacher_ppl"] == pos["student_ppl"]
    assert all(m.training for m in student.modules())
    student.eval()


def test_position_buckets_cover_every_prediction():
    assert [tuple(b) for b in position_buckets(8192)] == list(POSITION_BUCKETS)
    assert position_buckets(1) == [] and position_buckets(2) == [[0, 2]]
    assert position_buckets(600) == [[0, 512], [512, 600]]
    assert position_buckets(32768)[-2:] == [[8192, 16384], [16384, 32768]]
    for L in (2, 511, 512, 513, 2048, 5000, 8192, 20000):
        spans = position_buckets(L)
        assert spans[0][0] == 0 and spans[-1][1] == L
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert sum(b - max(a, 1) for a, b in spans) == L - 1  # predictions of tokens 1..L-1
    assert [bucket_label(b) for b in position_buckets(6000)] == ["0-512", "512-1K", "1K-2K", "2K-4K", "4K-6000"]


def test_long_document_is_cut_at_the_teachers_limit(pair):
    student, teacher = pair
    short = tiny_model("llama", layers=2, max_position_embeddings=600)
    ids = torch.randint(0, 128, (1, 900), generator=torch.Generator().manual_seed(2))
    pos = quality(student, short, {}, ids)["positions"]
    assert pos["tokens"] == 600 and pos["buckets"] == [[0, 512], [512, 600]]
    assert quality(student, teacher, {}, ids[:, :1])["positions"] is None


def test_markdown_and_plot(pair, tmp_path):
    student, teacher = pair
    blocks = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))
    long_ids = torch.randint(0, 128, (1, 700), generator=torch.Generator().manual_seed(4))
    trained = quality(student, teacher, {"heldout": blocks, "ood": blocks.flip(1)}, long_ids)
    converted = quality(liger.linearize(tiny_model("llama", layers=2, seed=5)), teacher,
                        {"heldout": blocks, "ood": blocks.flip(1)}, long_ids)
    md = quality_markdown(converted, trained, {"heldout": "held-out", "ood": "OOD"}, plot="positions.png")
    assert "| model | held-out ppl | held-out ratio | held-out KL | held-out top-1 | OOD ppl |" in md
    rows = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ")]
    assert rows[:4] == ["| model", "| teacher", "| converted", "| trained"]
    assert "| position | tokens | teacher ppl | converted ppl |" in md and "| 512-700 | 188 |" in md
    assert "![perplexity by position](positions.png)" in md
    alone = quality_markdown(None, {**trained, "positions": None}, {"ood": "OOD"})
    assert "converted" not in alone and "No long document" in alone
    pos = trained["positions"]
    path = position_plot({"teacher": pos["teacher_ppl"], "trained": pos["student_ppl"],
                          "converted": [float("nan"), pos["student_ppl"][1]]}, pos["buckets"], tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------ OOD texts


def test_ood_texts_are_shipped_verbatim_with_their_permission():
    folder = resources.files("liger.data").joinpath("ood_texts")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".txt"))
    assert names == sorted(f"{n}.txt" for n in LONG_NAMES + BLOCK_NAMES)
    docs = ood_documents()
    assert len(docs) == 8 and all(len(d) > 7000 for d in docs)
    for name, doc in zip(LONG_NAMES + BLOCK_NAMES, docs):
        assert "Everyone is permitted to copy and distribute verbatim copies\n of this license document, but " \
               "changing it is not allowed." in doc, name
        assert doc == folder.joinpath(f"{name}.txt").read_text(encoding="utf-8").strip()
    if sys.version_info >= (3, 11):
        import tomllib

        data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
        assert "ood_texts/*.txt" in data["liger.data"]
    assert "never trained on" in OOD_DESCRIPTION and "\n" not in OOD_DESCRIPTION


def _key(p: str) -> str:
    return re.sub(r"\s+", " ", p).strip()


def test_long_document_and_blocks_are_disjoint(tok):
    from liger.data import pack
    from liger.data.text import paragraphs

    long_docs, block_docs = ood_split()
    assert long_docs == ood_documents()[:2] and len(block_docs) == 6
    long_par = {_key(p) for d in long_docs for p in paragraphs(d)}
    assert not long_par & {_key(p) for d in block_docs for p in paragraphs(d)}
    assert all(d not in " ".join(long_docs) for d in block_docs)
    blocks, long_ids = ood_eval_data(tok, 512, 24)
    assert blocks.shape == (24, 512) and long_ids.shape == (1, 8192) and blocks.dtype == long_ids.dtype == torch.int64
    # the tokens are pack's: the blocks are the first blocks of the block texts, the long document the
    # start of the long texts' stream (EOS after each document, no special tokens)
    assert torch.equal(blocks, pack(block_docs, tok, 512)[:24])
    stream = pack(long_docs, tok, 1).view(-1)
    assert torch.equal(long_ids[0], stream[:8192]) and stream[7657] == tok.eos_token_id
    assert torch.equal(ood_long_document(tok, 8192), long_ids)
    assert ood_long_document(tok, 10**6).shape[1] >= 32768  # bench/position_ppl.py --tokens 32768
    few, none = ood_eval_data(tok, 2048, 3, long_tokens=0)
    assert few.shape == (3, 2048) and none is None


def test_ood_texts_are_not_in_the_builtin_corpus():
    from liger.data.builtin import builtin_documents

    def runs(text: str, k: int = 18) -> set[str]:  # a 17-word warranty disclaimer is in unittest's docstring
        w = text.split()
        return {" ".join(w[i : i + k]) for i in range(len(w) - k + 1)}

    builtin = builtin_documents()
    joined = "\n".join(builtin)
    for phrase in ("General Public License", "Free Documentation License", "verbatim copies"):
        assert phrase not in joined
    seen = set().union(*(runs(d) for d in builtin))
    for doc in ood_documents():
        assert not runs(doc) & seen
