"""Data sources, the held-out split, packing and data errors, on small local fixtures."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

import liger.data.builtin as builtin
import liger.data.selfgen as selfgen
from liger.data import Corpus, DataSpec, is_heldout, load_corpus, pack
from liger.data.files import ALPACA_NO_INPUT, ALPACA_WITH_INPUT
from liger.data.text import chunk, normalize, paragraphs
from liger.errors import DataError

DOCS = [f"Document number {i} talks about topic {i % 7} at some length, with words." for i in range(200)]


class ByteTokenizer:
    """A tiny tokenizer: one id per UTF-8 byte, EOS = 0."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False, **kw):
        assert not add_special_tokens
        return {"input_ids": [list(t.encode()) for t in texts]}


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from liger.teacher import teacher_path

    return AutoTokenizer.from_pretrained(teacher_path())


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def everything(c: Corpus) -> list[str]:
    return c.train + c.heldout


# ---------------------------------------------------------------------------------------------- builtin


def test_builtin_is_large_deterministic_split_and_deduplicated():
    a, b = load_corpus("builtin"), load_corpus("builtin")
    assert a.train == b.train and a.heldout == b.heldout
    assert a.source == "builtin (pydoc_data.topics + stdlib docstrings)"
    assert sum(map(len, a.train)) > 1_500_000 and len(a.train) > 500 and len(a.heldout) >= 20
    assert len(set(a.train)) == len(a.train) and len(set(a.heldout)) == len(a.heldout)
    assert not set(a.train) & set(a.heldout)
    assert all(is_heldout(d, 0.05) for d in a.heldout) and not any(is_heldout(d, 0.05) for d in a.train)
    alltext = everything(a)
    assert any(d.startswith("module json\n\n") for d in alltext)  # stdlib docstrings, grouped by module
    assert any('The "if" statement' in d for d in alltext)  # pydoc_data.topics
    assert not any(d.startswith(("module test.", "module idlelib.idle_test", "module lib2to3.tests")) for d in alltext)
    assert not any(d.startswith("module encodings.cp1252") or "\n\n\n" in d for d in alltext)  # generated codecs
    assert max(map(len, alltext)) < 70_000 and sorted(map(len, alltext))[len(alltext) // 2] > 1000
    c = load_corpus("builtin", seed=1)
    assert set(c.train) == set(a.train) and c.heldout == a.heldout and c.train != a.train  # seed orders only
    assert a.spec == DataSpec("builtin", "builtin", a.source, "sha256 < 0.05 of the hash space", 0, len(a.train),
                              len(a.heldout), sum(map(len, a.train)), sum(map(len, a.heldout)))


def test_builtin_is_read_from_its_cache(monkeypatch):
    docs = builtin.builtin_documents()
    assert builtin.cache_path().is_file() and builtin.cache_path().parent == Path(os.environ["LIGER_CACHE"]) / "corpus"

    def fail():
        raise AssertionError("extracted again instead of reading the cache")

    monkeypatch.setattr(builtin, "docstring_documents", fail)
    assert builtin.builtin_documents() == docs and docs == sorted(set(docs))


def test_normalize_chunk_and_paragraphs():
    assert normalize("Title\n    =====\n\n    Para one   \n    goes on\n\n\n\n        code\n    end") == \
        "Title\n\nPara one\ngoes on\n\n    code\nend"
    assert chunk(["a" * 10, "b" * 10, "c" * 30], limit=25) == ["a" * 10 + "\n\n" + "b" * 10, "c" * 30]
    assert paragraphs("one\r\n  two  \r\n \r\n\n    three\n\n") == ["one\n  two", "    three"]


# ---------------------------------------------------------------------------------------------- files


def test_txt_small_file_is_one_document_large_is_cut_at_paragraphs(tmp_path):
    (tmp_path / "small.txt").write_text("First paragraph here.\r\n\r\nSecond one,\nwrapped.\n")
    assert load_corpus(str(tmp_path / "small.txt"), heldout_fraction=0).train == \
        ["First paragraph here.\n\nSecond one,\nwrapped."]
    (tmp_path / "big.txt").write_text("\n\n".join(DOCS))
    c = load_corpus(str(tmp_path / "big.txt"))
    docs = everything(c)
    assert len(docs) > 2 and all(len(d) <= 4000 for d in docs) and len(c.heldout) >= 1
    assert sorted(p for d in docs for p in d.split("\n\n")) == sorted(DOCS)  # every paragraph once, none split


def test_jsonl_text_content_and_custom_fields(tmp_path):
    c = load_corpus(str(write_jsonl(tmp_path / "a.jsonl", [{"text": d, "id": i} for i, d in enumerate(DOCS)])))
    assert sorted(everything(c)) == sorted(DOCS)
    c = load_corpus(str(write_jsonl(tmp_path / "b.jsonl", [{"content": d} for d in DOCS[:20]])))
    assert sorted(everything(c)) == sorted(DOCS[:20])
    path = write_jsonl(tmp_path / "c.jsonl", [{"body": d, "text": "not this"} for d in DOCS[:20]])
    assert sorted(everything(load_corpus(str(path), text_field="body"))) == sorted(DOCS[:20])


def test_jsonl_alpaca_records_use_the_alpaca_template(tmp_path):
    recs = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"instruction": "Say hi.", "output": "Hi!"}]
    c = load_corpus(str(write_jsonl(tmp_path / "alpaca.jsonl", recs)), heldout_fraction=0)
    assert sorted(c.train) == sorted([
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5",
        ALPACA_NO_INPUT.format(instruction="Name a colour.", output="Blue."),
        ALPACA_NO_INPUT.format(instruction="Say hi.", output="Hi!"),
    ])
    assert "### Input:" in ALPACA_WITH_INPUT and "### Input:" not in ALPACA_NO_INPUT


def test_parquet_text_and_alpaca_columns(tmp_path):
    c = load_corpus(str(write_parquet(tmp_path / "t.parquet", {"text": DOCS[:50], "n": list(range(50))})))
    assert sorted(everything(c)) == sorted(DOCS[:50])
    columns = {"instruction": ["Q1", "Q2"], "input": ["ctx", None], "output": ["A1", "A2"]}
    docs = everything(load_corpus(str(write_parquet(tmp_path / "a.parquet", columns)), heldout_fraction=0))
    assert sorted(d.split("### Instruction:\n")[1] for d in docs) == [
        "Q1\n\n### Input:\nctx\n\n### Response:\nA1", "Q2\n\n### Response:\nA2"]


def test_folder_mixes_formats_recursively_and_skips_hidden_and_unknown(tmp_path):
    root = tmp_path / "data"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.txt").write_text("\n\n".join(DOCS[:10]))
    write_jsonl(root / "sub" / "b.jsonl", [{"text": d} for d in DOCS[10:60]])
    alpaca = [{"instruction": f"Say {i}", "input": "", "output": f"{i}!"} for i in range(30)]
    write_jsonl(root / "sub" / "deeper" / "c.jsonl", alpaca)
    write_parquet(root / "e.parquet", {"content": DOCS[60:100]})
    write_jsonl(root / ".hidden" / "x.jsonl", [{"text": "SECRET"}])
    (root / "notes.md").write_text("IGNORED")
    c = load_corpus(str(root), heldout_fraction=0.2)
    docs = everything(c)
    assert len(docs) == 1 + 50 + 30 + 40  # the small .txt file is one document
    assert sum("### Instruction:\nSay 3\n\n### Response:\n3!" in d for d in docs) == 1
    assert sum(d == DOCS[70] for d in docs) == 1 and sum(d == DOCS[20] for d in docs) == 1
    assert not any("SECRET" in d or "IGNORED" in d for d in docs)
    assert 0 < len(c.heldout) < len(docs) and not set(c.train) & set(c.heldout)
    assert c.spec.kind == "local" and c.spec.n_train_docs == len(c.train)


# ---------------------------------------------------------------------------------------------- datasets


def test_saved_dataset_dict_uses_its_validation_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:40]}),
                               "validation": datasets.Dataset.from_dict({"text": DOCS[40:45] + DOCS[:2]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    c = load_corpus(str(tmp_path / "dd"), heldout_fraction=0.5)
    assert sorted(c.heldout) == sorted(DOCS[40:45] + DOCS[:2])  # the given split, whatever the fraction
    assert sorted(c.train) == sorted(DOCS[2:40])  # a text in both splits is held out only
    assert c.spec.kind == "saved" and "validation" in c.source


def test_saved_dataset_is_split_by_hash(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"body": DOCS[:100], "n": list(range(100))}).save_to_disk(str(tmp_path / "one"))
    c = load_corpus(str(tmp_path / "one"), text_field="body", heldout_fraction=0.3)
    assert sorted(everything(c)) == sorted(DOCS[:100])
    assert c.heldout and all(is_heldout(d, 0.3) for d in c.heldout) and not any(is_heldout(d, 0.3) for d in c.train)


# ---------------------------------------------------------------------------------------------- split


def test_heldout_split_is_per_document_and_dedupes_first(tmp_path):
    docs = DOCS + DOCS[:50] + ["  " + DOCS[3] + "\n"]  # duplicates, one differing only in surrounding space
    c = load_corpus(str(write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in docs])), heldout_fraction=0.25)
    assert sorted(everything(c)) == sorted(DOCS) and not set(c.train) & set(c.heldout)
    assert set(c.heldout) == {d for d in DOCS if is_heldout(d, 0.25)} and 20 < len(c.heldout) < 80
    fewer = load_corpus(str(write_jsonl(tmp_path / "e.jsonl", [{"text": d} for d in DOCS[::3]])), heldout_fraction=0.25)
    assert set(fewer.heldout) == set(c.heldout) & set(DOCS[::3])  # removing documents moves no other one


def test_seed_shuffles_training_order_only_and_max_documents(tmp_path):
    path = str(write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in DOCS]))
    a, b, c = load_corpus(path, seed=3), load_corpus(path, seed=3), load_corpus(path, seed=4)
    assert a.train == b.train and a.train != c.train and sorted(a.train) == sorted(c.train)
    assert a.heldout == c.heldout and a.train != [d for d in DOCS if d in set(a.train)]  # actually shuffled
    few = load_corpus(path, seed=3, max_documents=7)
    assert few.train == a.train[:7] and few.heldout == a.heldout


def test_tiny_source_still_gets_one_heldout_document(tmp_path):
    path = write_jsonl(tmp_path / "two.jsonl", [{"text": "alpha document"}, {"text": "beta document"}])
    c = load_corpus(str(path), heldout_fraction=0.01)
    assert len(c.train) == 1 and len(c.heldout) == 1
    assert load_corpus(str(path), heldout_fraction=0).heldout == []


# ---------------------------------------------------------------------------------------------- self


def test_self_generated_is_cached_deterministic_and_keeps_the_rng(monkeypatch, tmp_path, smol_tokenizer):
    monkeypatch.setenv("LIGER_CACHE", str(tmp_path))  # an empty cache: generate for real
    monkeypatch.setattr(selfgen, "MAX_NEW_TOKENS", 6)
    monkeypatch.setattr(selfgen, "BATCH_SIZE", 4)
    model = tiny_model("llama", layers=1, vocab_size=len(smol_tokenizer))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = load_corpus("self", model=model, tokenizer=smol_tokenizer, max_documents=5, heldout_fraction=0.2)
    assert torch.equal(torch.rand(3), expected)  # generation left the caller's RNG alone
    assert len(a.train) + len(a.heldout) == 5 and len(a.heldout) >= 1 and smol_tokenizer.padding_side == "right"
    prompts = selfgen.prompts()
    assert len(prompts) == len(set(prompts)) >= 300
    assert sorted(d.split("\n\n")[0] for d in everything(a)) == sorted(prompts[:5])
    assert all(len(d.split("\n\n", 1)[1]) > 5 for d in everything(a))  # an answer follows each prompt
    files = list((tmp_path / "selfgen").glob("*.jsonl"))
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == 8  # whole batches of 4 are generated

    calls = []
    real = model.generate

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    b = load_corpus("self", model=model, tokenizer=smol_tokenizer, max_documents=5, heldout_fraction=0.2, seed=9)
    assert sorted(b.train) == sorted(a.train) and b.heldout == a.heldout  # seed never changes the documents
    first = selfgen.self_generated(model, smol_tokenizer, 5)
    assert selfgen.self_generated(model, smol_tokenizer, 8)[:5] == first and calls == []  # read from the cache
    with files[0].open("a") as f:
        f.write('{"text": "a line cut short by a ki')  # a kill in the middle of a write
    more = load_corpus("self:10", model=model, tokenizer=smol_tokenizer, heldout_fraction=0).train
    assert calls == [4] and len(more) == 10  # only the missing batch was generated; "self:N" asks for N
    assert selfgen.self_generated(model, smol_tokenizer, 10)[:5] == first  # sample i never depends on the count
    other = tiny_model("llama", layers=1, seed=1, vocab_size=len(smol_tokenizer))
    key = selfgen.cache_key
    assert key(model, smol_tokenizer, 6, 0, 4) != key(other, smol_tokenizer, 6, 0, 4)
    assert key(model, smol_tokenizer, 6, 0, 4) != key(model, smol_tokenizer, 6, 0, 8)


def test_self_needs_model_and_tokenizer(smol_tokenizer):
    with pytest.raises(DataError, match="--data self needs the teacher model and its tokenizer"):
        load_corpus("self")
    with pytest.raises(DataError, match="needs the teacher"):
        load_corpus("self", tokenizer=smol_tokenizer)


# ---------------------------------------------------------------------------------------------- mixes


def test_mix_gives_equal_shares_and_keeps_each_sources_split(tmp_path):
    small = [f"Short note {i} on gardening." for i in range(30)]
    large = [f"A much longer document {i} about the weather, with many more words in every line." for i in range(120)]
    a = str(write_jsonl(tmp_path / "small.jsonl", [{"text": d} for d in small]))
    b = str(write_jsonl(tmp_path / "large.jsonl", [{"text": d} for d in large]))
    mix = load_corpus(f"{a}+{b}", seed=2, heldout_fraction=0.2)
    alone_a, alone_b = load_corpus(a, seed=2, heldout_fraction=0.2), load_corpus(b, seed=2, heldout_fraction=0.2)
    assert mix.spec.kind == "mix" and sorted(mix.heldout) == sorted(alone_a.heldout + alone_b.heldout)
    assert set(mix.train) == set(alone_a.train) | set(alone_b.train)  # each source split by its own rule
    chars_a = sum(len(d) for d in mix.train if d in set(small))
    chars_b = sum(len(d) for d in mix.train if d in set(large))
    assert chars_b == alone_b.spec.train_chars and chars_b <= chars_a < chars_b + max(map(len, small))  # equal
    assert mix.heldout[:2] in ([alone_a.heldout[0], alone_b.heldout[0]],)  # held-out interleaved, source by source
    assert mix.train != load_corpus(f"{a}+{b}", seed=3, heldout_fraction=0.2).train  # shuffled together by seed
    for bad in (f"{a}+", f"{a}+{a}"):
        with pytest.raises(DataError, match="a mix names each source once"):
            load_corpus(bad)
    plus = tmp_path / "notes+more.txt"  # an existing path is never read as a mix
    plus.write_text("\n\n".join(small))
    assert load_corpus(str(plus)).spec.kind == "local"


def test_weighted_mix_gives_each_part_its_share(tmp_path):
    big = [f"Big source document {i}: " + "words about the weather " * (5 + i % 4) for i in range(200)]
    mid = [f"Middle source document {i}, on gardening and soil. " * 3 for i in range(150)]
    small = [f"Small note {i}." for i in range(40)]
    paths = [str(write_jsonl(tmp_path / f"{n}.jsonl", [{"text": d} for d in docs]))
             for n, docs in (("big", big), ("mid", mid), ("small", small))]
    a, b, c = paths
    alone = {p: load_corpus(p, seed=1, heldout_fraction=0.1) for p in paths}
    longest = {p: max(map(len, alone[p].train)) for p in paths}

    def chars(mix, p):
        docs = set(alone[p].train)
        return sum(len(d) for d in mix.train if d in docs)

    # b cut (a fifth of the text, smaller than its whole), c repeated (a tenth): a and nothing else sets the total
    mix = load_corpus(f"{a}+{b}@0.2+{c}@0.1", seed=1, heldout_fraction=0.1)
    total = alone[a].spec.train_chars / 0.7
    assert chars(mix, a) == alone[a].spec.train_chars  # the largest unweighted part: once, whole
    for p, share in ((b, 0.2), (c, 0.1)):
        assert share * total <= chars(mix, p) < share * total + longest[p]
    assert chars(mix, b) < alone[b].spec.train_chars  # b cut
    assert sum(d in set(alone[c].train) for d in mix.train) > len(alone[c].train)  # c repeated
    assert mix.spec.train_chars == sum(chars(mix, p) for p in paths) and mix.spec.kind == "mix"
    assert mix.source.startswith("70% ") and "+ 20% " in mix.source and "+ 10% " in mix.source
    # two unweighted parts split the rest equally; the larger sets the total
    mix = load_corpus(f"{c}@0.25+{a}+{b}", seed=1, heldout_fraction=0.1)
    total = alone[a].spec.train_chars / 0.375
    assert chars(mix, a) == alone[a].spec.train_chars
    assert alone[a].spec.train_chars <= chars(mix, b) < alone[a].spec.train_chars + longest[b]
    assert 0.25 * total <= chars(mix, c) < 0.25 * total + longest[c]
    # held-out: every document of every part, the first ones in proportion to the shares
    assert sorted(mix.heldout) == sorted(sum((alone[p].heldout for p in paths), []))
    assert {mix.heldout[0], mix.heldout[1], mix.heldout[2]} == {alone[p].heldout[0] for p in paths}
    assert load_corpus(f"{a}+{b}@0.2", seed=1, heldout_fraction=0.1).train != \
        load_corpus(f"{a}+{b}@0.2", seed=2, heldout_fraction=0.1).train


@pytest.mark.parametrize("source,match", [
    ("builtin+recall@0.6+self@0.4", r"the shares sum to 1, leaving nothing .* less than 1"),
    ("builtin+recall@0.7+self:4@0.5", r"the shares sum to 1\.2"),
    ("builtin+recall@1", r"share of 'recall' must be a number between 0 and 1 \(exclusive\).*got '1'"),
    ("builtin+recall@0", r"must be a number between 0 and 1"),
    ("builtin+recall@-0.1", r"must be a number between 0 and 1"),
    ("builtin+recall@abc", r"must be a number between 0 and 1.*got 'abc'"),
    ("builtin+recall@", r"must be a number between 0 and 1"),
    ("builtin@0.5+recall@0.2", r"every part of the mix has a share; leave at least one part without '@F'"),
    ("recall@0.1", r"a share '@F' weighs a part of a mix joined by '\+' \(e\.g\. builtin\+recall@0\.1\); "
                   r"for recall alone use --data recall"),
    ("builtin+recall@0.1+recall", r"a mix names each source once"),
])
def test_weighted_mix_errors(source, match):
    with pytest.raises(DataError, match=match) as err:
        load_corpus(source)
    assert "\n" not in str(err.value)


def test_an_existing_path_with_at_is_a_path(tmp_path):
    at = tmp_path / "notes@0.5.txt"
    at.write_text("\n\n".join(f"Paragraph {i} of the notes, with some words." for i in range(30)))
    assert load_corpus(str(at)).spec.kind == "local"
    other = write_jsonl(tmp_path / "o.jsonl", [{"text": f"Other document {i}."} for i in range(30)])
    mix = load_corpus(f"{at}+{other}@0.5")
    assert mix.spec.kind == "mix" and "50% local" in mix.source


# ---------------------------------------------------------------------------------------------- recall


@pytest.fixture(scope="module")
def episodes():
    from liger.data.recall import recall_episodes

    return recall_episodes(300, seed=0)


def _at(text: str, word: str, start: int = 0) -> list[int]:
    import re

    return [m.start() for m in re.finditer(rf"(?<![\w]){re.escape(word)}(?![\w])", text[start:])]


def test_recall_documents_are_deterministic_and_fit_a_block(episodes):
    from liger.data.recall import recall_documents

    docs = [e.text for e in episodes]
    assert recall_documents(300, seed=0) == docs and recall_documents(40, seed=0) == docs[:40]  # a prefix
    assert recall_documents(40, seed=1) != docs[:40]
    assert len(set(docs)) == len(docs) and all(d == d.strip() for d in docs)
    assert max(map(len, docs)) <= 1800 and sum(map(len, docs)) / len(docs) > 900
    assert [e.kind for e in episodes[:4]] == ["passkey", "associative"] * 2
    short = recall_documents(50, seed=3, max_chars=600)
    assert max(map(len, short)) <= 600
    with pytest.raises(DataError, match="max_chars >= 400"):
        recall_documents(3, max_chars=100)


def test_recall_answers_follow_their_statements(episodes):
    kinds = set()
    for e in episodes:
        text, q = e.text, e.questions_at
        assert e.asked and set(e.asked) <= set(e.facts)
        assert len({k for k, _ in e.facts}) == len(e.facts) == len({v for _, v in e.facts})
        last = q
        for key, value in e.asked:
            stated = _at(text, value)
            assert len(stated) == 2 and stated[0] < q, (value, text)  # stated once, answered once
            assert any(k < stated[0] for k in _at(text[:q], key)) or e.kind == "associative"
            line = text[:stated[0]].rpartition("\n")[2] + text[stated[0]:].partition("\n")[0]
            assert key in line or e.kind == "passkey"  # a pair states its key and value on one line
            answer = stated[1]
            assert any(last <= k < answer for k in _at(text, key))  # in order: asked by its key, then answered
            last = answer
        for _, value in set(e.facts) - set(e.asked):
            assert len(_at(text, value)) == 1
        kinds.add((e.kind, e.facts[0][1].isdigit()))
    assert kinds == {("passkey", True), ("passkey", False), ("associative", True), ("associative", False)}


def test_recall_does_not_reuse_the_evaluation_probes(episodes):
    import re

    from liger.data import probes
    from liger.data.recall import KEY_VOCABULARY, filler_sentences

    mqar = set(probes.MQAR_KEYS)
    assert not KEY_VOCABULARY & mqar
    phrases = {"pass key", "secret code", "passkey"}
    for t in (probes.PASSKEY_INTRO, probes.PASSKEY_FILLER, probes.PASSKEY_NEEDLE, probes.PASSKEY_QUESTION,
              probes.MQAR_INTRO, probes.MQAR_PAIR, probes.MQAR_RECALL):
        for frag in re.split(r"\{key\}|[.?!\n]", t):
            if len(frag.split()) >= 2:
                phrases.add(" ".join(frag.split()).lower())
    assert {"the code for", "the pass key is", "the grass is green", "now recall the codes"} <= phrases
    for e in episodes:
        low = e.text.lower()
        assert not [p for p in phrases if p in low], e.text
        assert not {w for w in re.findall(r"[a-z]+", low)} & mqar, e.text
    held = "\n".join(" ".join(d.split()) for d in load_corpus("builtin").heldout)
    assert not [s for s in filler_sentences() if s in held]  # filler comes from the training side only


def test_recall_source_and_its_split():
    c = load_corpus("recall:120")
    assert c.spec.kind == "recall" and c.source == "recall (120 synthetic retrieval episodes)"
    assert len(c.train) + len(c.heldout) == 120 and c.heldout and len(c.train) > 100
    assert all(is_heldout(d, 0.05) for d in c.heldout) and not any(is_heldout(d, 0.05) for d in c.train)
    from liger.data.recall import recall_documents

    assert set(c.train + c.heldout) == set(recall_documents(120))
    with pytest.raises(DataError, match=r"recall:N needs N >= 1"):
        load_corpus("recall:0")


# ---------------------------------------------------------------------------------------------- pack


def test_pack_blocks_eos_and_tail():
    blocks = pack(["ab", "cde", "f"], ByteTokenizer(), 3)
    assert blocks.dtype == torch.long and blocks.tolist() == [[97, 98, 0], [99, 100, 101], [0, 102, 0]]
    assert pack(["ab", "cd"], ByteTokenizer(), 4).tolist() == [[97, 98, 0, 99]]  # incomplete tail dropped
    assert pack(["abc", "de"], ByteTokenizer(), 2, add_eos=False).tolist() == [[97, 98], [99, 100]]
    with pytest.raises(DataError, match="not enough text for one 64-token block"):
        pack(["a"], ByteTokenizer(), 64)
    with pytest.raises(DataError, match="not enough text"):
        pack([], ByteTokenizer(), 8)


def test_pack_with_the_real_tokenizer_is_fast_and_exact(smol_tokenizer):
    tok = smol_tokenizer
    texts = [f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i * 7} times." for i in range(3000)]
    start = time.perf_counter()
    blocks = pack(texts, tok, 256)
    elapsed = time.perf_counter() - start
    ids = [t for text in texts for t in tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert blocks.shape == (len(ids) // 256, 256) and blocks.flatten().tolist() == ids[: blocks.numel()]
    assert (blocks == tok.eos_token_id).sum() == ids[: blocks.numel()].count(tok.eos_token_id) > 2000
    assert tok.bos_token_id is None or tok.bos_token_id == tok.eos_token_id or (blocks == tok.bos_token_id).sum() == 0
    assert elapsed < 10, f"packing ~60K tokens took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------------- errors


def _only_other_files(p: Path) -> str:
    (p / "docs").mkdir()
    (p / "docs" / "readme.md").write_text("hello")
    return str(p / "docs")


def _empty_files(p: Path) -> str:
    (p / "blank").mkdir()
    (p / "blank" / "a.txt").write_text("\n\n  \n")
    write_jsonl(p / "blank" / "b.jsonl", [])
    return str(p / "blank")


def _corrupt_saved(p: Path) -> str:
    (p / "saved").mkdir()
    (p / "saved" / "state.json").write_text("{not json")
    return str(p / "saved")


def _empty_saved(p: Path) -> str:
    import datasets

    datasets.Dataset.from_dict({"text": ["", "  \n"]}).save_to_disk(str(p / "empty_ds"))
    return str(p / "empty_ds")


def file(name: str, content: str | bytes):
    """A setup writing one file into the test folder and returning its path."""

    def setup(p: Path) -> str:
        (p / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(p / name)

    return setup


BAD_SOURCES = [
    (lambda p: str(p / "missing.txt"), r"data path .*missing\.txt does not exist; check the path, or use --data"),
    (lambda p: str(p / "nested" / "dir" / "data"), r"does not exist"),
    (file("e.txt", ""), r"e\.txt is empty: no training text; add text"),
    (file("e.jsonl", "\n\n"), r"e\.jsonl is empty"),
    (file("x.csv", "a,b"), r"unsupported file type '\.csv'; supported: \.txt, \.jsonl, \.parquet"),
    (file("bad.jsonl", '{"text": "ok"}\n{oops\n'), r"bad\.jsonl: line 2 is not valid JSON"),
    (file("list.jsonl", '["a", "b"]\n'), r"line 1 is a JSON list, not an object"),
    (file("f.jsonl", '{"body": "x", "meta": 1}\n'), r"fields found: body, meta; pass text_field"),
    (file("n.jsonl", '{"text": ["a", "list"]}\n'), r"field 'text' holds list values, not text"),
    (file("u.txt", b"ok\xff\xfe\xfa"), r"u\.txt is not UTF-8 text \(byte 2"),
    (file("u.jsonl", b'{"text": "\xff"}\n'), r"is not UTF-8 text"),
    (file("c.parquet", b"PAR1 this is not parquet"), r"c\.parquet is not a readable parquet file"),
    (lambda p: str(write_parquet(p / "w.parquet", {"title": ["a"]})), r"fields found: title"),
    (lambda p: (p / "void").mkdir() or str(p / "void"), r"holds no \.txt, \.jsonl, \.parquet files \(it is empty"),
    (_only_other_files, r"holds no .* files \(found only: \.md\)"),
    (_empty_files, r"the files in .*blank are empty: no training text"),
    (_corrupt_saved, r"cannot read the saved dataset"),
    (_empty_saved, r"has no training text: it holds no text"),
    (file("one.jsonl", '{"text": "only one"}\n'), r"all 1 of its documents fell in the held-out split"),
]


@pytest.mark.parametrize("setup,match", BAD_SOURCES)
def test_bad_data_gives_one_clear_error(tmp_path, setup, match):
    source = setup(tmp_path)
    with pytest.raises(DataError, match=match) as err:
        load_corpus(source, heldout_fraction=0.99 if "one.jsonl" in source else 0.05)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


def test_missing_text_field_is_named(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello there"}])
    with pytest.raises(DataError, match=r"no field 'body'; fields found: text"):
        load_corpus(str(path), text_field="body")


@pytest.mark.parametrize("offline", [True, False])
def test_unreachable_hub_fails_fast_with_alternatives(monkeypatch, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"Hugging Face hub .*use --data builtin \(offline\), a local") as err:
        load_corpus("no-such-org-liger/no-such-dataset-xyz")
    assert time.perf_counter() - start < 15
    assert ("offline mode" in str(err.value)) == offline


def test_bad_arguments():
    with pytest.raises(DataError, match=r"heldout_fraction must be in \[0, 1\)"):
        load_corpus("builtin", heldout_fraction=1.0)
    with pytest.raises(DataError, match="max_documents must be at least 1"):
        load_corpus("builtin", max_documents=0)
    with pytest.raises(DataError, match="seq_len must be at least 1"):
        pack(["abc"], ByteTokenizer(), 0)
