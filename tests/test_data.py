"""Data sources, the held-out split, packing and data errors, on small local fixtures."""

import json

import pytest
import torch
from conftest import tiny_model

from liger.data import is_heldout, load_corpus, pack
from liger.errors import DataError

DOCS = [f"Document number {i} talks about topic {i % 7} at some length, with words." for i in range(200)]


class CharTokenizer:
    """A tiny tokenizer: one id per byte, EOS = 0."""

    eos_token_id = 0
    pad_token_id = 0
    chat_template = None
    padding_side = "right"

    def __call__(self, texts, add_special_tokens=False, **kw):
        return {"input_ids": [list(t.encode()) for t in texts]}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_builtin_is_large_deterministic_and_split():
    a, b = load_corpus("builtin"), load_corpus("builtin")
    assert a.train == b.train and a.heldout == b.heldout
    assert sum(map(len, a.train)) > 1_500_000 and len(a.heldout) > 100
    assert not set(a.train) & set(a.heldout) and len(set(a.train)) == len(a.train)
    assert set(load_corpus("builtin", seed=1).train) == set(a.train)  # seed orders, never splits
    assert load_corpus("builtin", seed=1).train != a.train


def test_txt_jsonl_parquet_and_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("\n\n".join(DOCS[:50]))
    write_jsonl(tmp_path / "d" / "b.jsonl", [{"text": d} for d in DOCS[50:100]])
    write_jsonl(tmp_path / "d" / "c.jsonl", [{"instruction": f"Say {i}", "input": "", "output": f"{i}!"} for i in range(30)])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": DOCS[100:150]}), tmp_path / "d" / "e.parquet")
    c = load_corpus(str(tmp_path / "d"), heldout_fraction=0.2)
    alltext = c.train + c.heldout
    assert any("### Instruction:\nSay 3" in d and "### Response:\n3!" in d for d in alltext)
    assert sum(DOCS[120] in d for d in alltext) == 1 and sum(DOCS[60] == d for d in alltext) == 1
    assert 0 < len(c.heldout) < len(alltext) and not set(c.train) & set(c.heldout)
    assert all(is_heldout(d, 0.2) for d in c.heldout)


def test_saved_dataset_dict_uses_its_validation_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:40]}),
                               "validation": datasets.Dataset.from_dict({"text": DOCS[40:45] + DOCS[:2]})})
    dd.save_to_disk(str(tmp_path / "ds"))
    c = load_corpus(str(tmp_path / "ds"))
    assert sorted(c.heldout) == sorted(DOCS[40:45] + DOCS[:2])
    assert len(c.train) == 38 and not set(c.train) & set(c.heldout)
    datasets.Dataset.from_dict({"body": DOCS[:10]}).save_to_disk(str(tmp_path / "one"))
    assert len(load_corpus(str(tmp_path / "one"), text_field="body", heldout_fraction=0.5).train) >= 1


def test_self_generated_is_cached_and_deterministic():
    from transformers import AutoTokenizer

    from liger.teacher import teacher_path

    tok = AutoTokenizer.from_pretrained(teacher_path())
    model = tiny_model("llama", vocab_size=len(tok))
    a = load_corpus("self", model=model, tokenizer=tok, max_documents=4, heldout_fraction=0.25)
    b = load_corpus("self", model=model, tokenizer=tok, max_documents=4, heldout_fraction=0.25)
    assert a.train == b.train and len(a.train) + len(a.heldout) == 4
    assert all(d.split("\n\n")[0].endswith((".", "?")) for d in a.train)  # each starts with its prompt
    with pytest.raises(DataError, match="needs the teacher"):
        load_corpus("self")


def test_pack_blocks_and_eos():
    blocks = pack(["ab", "cde", "f"], CharTokenizer(), 3)
    assert blocks.tolist() == [[97, 98, 0], [99, 100, 101], [0, 102, 0]]
    assert pack(["ab", "cd"], CharTokenizer(), 4).tolist() == [[97, 98, 0, 99]]  # tail dropped
    assert pack(["abc"], CharTokenizer(), 2, add_eos=False).shape == (1, 2)
    with pytest.raises(DataError, match="not enough text"):
        pack(["a"], CharTokenizer(), 64)


@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda p: str(p / "missing.txt"), "does not exist"),
        (lambda p: (p / "e.txt").write_text("") and str(p / "e.txt") or str(p / "e.txt"), "no training text"),
        (lambda p: (p / "x.csv").write_text("a,b") and str(p / "x.csv"), "unsupported file type '.csv'"),
        (lambda p: (p / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n') and str(p / "bad.jsonl"), "line 2 is not valid JSON"),
        (lambda p: str(write_jsonl(p / "f.jsonl", [{"body": "x"}])), "fields found: body"),
        (lambda p: (p / "u.txt").write_bytes(b"\xff\xfe\xfa") and str(p / "u.txt"), "not UTF-8"),
        (lambda p: (p / "c.parquet").write_bytes(b"nope") and str(p / "c.parquet"), "not a readable parquet"),
        (lambda p: (p / "emptydir").mkdir() or str(p / "emptydir"), "holds no"),
        (lambda p: "no-such-org/no-such-dataset", "hub is not reachable"),
    ],
)
def test_bad_data_gives_one_clear_error(tmp_path, monkeypatch, setup, match):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=match):
        load_corpus(setup(tmp_path))
