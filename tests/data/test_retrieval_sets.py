"""The real retrieval sets of benchmarks/prepare_retrieval_data.py: split by document with no leak from test into
train, consistent corpus/queries/qrels/pairs files, dedupe, caps, determinism; plus the readers they use.

Each set is built twice (with --limit, to stay fast) into temporary directories; a set whose source is not installed
is skipped with the reason."""

from __future__ import annotations

import collections
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from encoderforge import EncoderforgeError
from encoderforge.data import datasets

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prepare_retrieval_data.py"
LIMITS = {"license": 400, "bbc": 400, "wordnet": 6000}  # documents kept per quick build
SPLITS = ("train", "dev", "test")


def load_script():
    spec = importlib.util.spec_from_file_location("prepare_retrieval_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


prep = load_script()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module", params=sorted(LIMITS))
def built(request, tmp_path_factory):
    """(set name, directory of build 1, directory of build 2)."""
    name = request.param
    dirs = []
    for k in (1, 2):
        out = tmp_path_factory.mktemp(f"{name}{k}")
        try:
            prep.prepare(name, out, seed=3, limit=LIMITS[name])
        except EncoderforgeError as e:
            pytest.skip(f"{name}: source not installed: {e}")
        dirs.append(out / name)
    return name, dirs[0], dirs[1]


def test_builds_are_byte_identical(built):
    _, a, b = built
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"corpus.jsonl", "README.md"} | {
        f"{s}.{k}" for s in SPLITS for k in ("queries.jsonl", "qrels.tsv", "pairs.jsonl")
    } == set(names)
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_split_by_document_and_files_consistent(built):
    name, d, _ = built
    corpus = read_jsonl(d / "corpus.jsonl")
    ids = [row["id"] for row in corpus]
    assert len(ids) == len(set(ids)) and all(row["text"].strip() and row["id"] for row in corpus)
    assert len({prep.norm(row["text"]) for row in corpus}) == len(corpus)  # exact duplicates merged
    split_of = {row["id"]: row["split"] for row in corpus}
    text_of = {row["id"]: row["text"] for row in corpus}
    doc_texts = {prep.norm(t) for t in text_of.values()}
    all_qids, qtexts = [], {}
    for s in SPLITS:
        queries = read_jsonl(d / f"{s}.queries.jsonl")
        qtext = {q["id"]: q["text"] for q in queries}
        assert len(qtext) == len(queries) and all(t.strip() for t in qtext.values())
        assert not {prep.norm(t) for t in qtext.values()} & doc_texts  # no query identical to a document
        qrels = [line.split("\t") for line in (d / f"{s}.qrels.tsv").read_text(encoding="utf-8").splitlines()]
        assert all(len(r) == 3 and r[2] == "1" for r in qrels)
        assert {q for q, _, _ in qrels} == set(qtext)  # every query has a relevant document, and only these
        assert all(split_of[doc] == s for _, doc, _ in qrels)  # a split's positives are its own documents only
        pairs = [(p["query"], p["positive"]) for p in read_jsonl(d / f"{s}.pairs.jsonl")]
        assert pairs == [(qtext[q], text_of[doc]) for q, doc, _ in qrels]
        all_qids += list(qtext)
        qtexts[s] = {prep.norm(t) for t in qtext.values()}
    assert len(all_qids) == len(set(all_qids))
    assert not qtexts["train"] & qtexts["test"] and not qtexts["train"] & qtexts["dev"]
    assert all(qtexts.values()), f"{name}: a split has no query at this --limit"
    readme = (d / "README.md").read_text(encoding="utf-8")
    assert f"{len(corpus)} documents" in readme and "seed 3" in readme


def test_license_caps_and_rule_filters():
    try:
        src = prep.license_source(train_cap=3, eval_cap=2)
    except EncoderforgeError as e:
        pytest.skip(f"licensedcode-data not installed: {e}")
    assert all(len(text.split()) >= 5 and "{{" not in text for _, text, _ in src.queries)
    b = prep.build(src, seed=0)
    for s, cap in (("train", 3), ("dev", 2), ("test", 2)):
        per_doc = collections.Counter(doc for q in b.queries[s] for doc in q[2])
        assert per_doc and max(per_doc.values()) <= cap
    assert b.dropped["queries: over the cap of 3 per document (train)"] > 0


def test_wordnet_group_split_and_pair_cap():
    try:
        src = prep.wordnet_source(max_train_pairs=500)
    except EncoderforgeError as e:
        pytest.skip(f"WordNet not installed: {e}")
    b = prep.build(src, seed=1, limit=8000)
    split_of = {row["id"]: row["split"] for row in b.corpus}
    assert sum(len(q[2]) for q in b.queries["train"]) <= 500
    assert any(len(q[2]) > 1 for s in SPLITS for q in b.queries[s])  # a definition may answer several headwords
    assert all(len({split_of[doc] for doc in q[2]}) == 1 for s in SPLITS for q in b.queries[s])
    share = collections.Counter(split_of.values())
    assert 0.7 < share["train"] / len(split_of) < 0.9  # the group scheme still gives about 80/10/10


def test_wordnet_glosses_reader(tmp_path):
    try:
        glosses = datasets.wordnet_glosses()
    except EncoderforgeError as e:
        pytest.skip(str(e))
    assert len(glosses) == 117659  # WordNet 3.0: 82,115 noun + 13,767 verb + 18,156 adj + 3,621 adv synsets
    by_id = {sid: (words, definition) for sid, words, definition in glosses}
    assert by_id["n00001740"][0] == ["entity"]
    # the example sentences ("able to swim"; ...) are cut, a parenthesis inside the definition is kept
    assert by_id["a00001740"] == (
        ["able"],
        "(usually followed by `to') having the necessary means or skill or know-how or authority to do something",
    )
    assert all(definition and '; "' not in definition for _, definition in by_id.values())
    lemmas = {w for words, _ in by_id.values() for w in words}
    assert "hot dog" in lemmas and not any("_" in w or w.endswith(("(a)", "(p)", "(ip)")) for w in lemmas)
    with pytest.raises(EncoderforgeError, match="wordnet-base"):
        datasets.wordnet_glosses(tmp_path)


def test_bbc_and_license_rule_readers():
    try:
        arts, rules = datasets.bbc_articles(), datasets.license_rules()
    except EncoderforgeError as e:
        pytest.skip(str(e))
    assert len(arts) == 2225 and arts[0][:2] == ("business/001", "Ad sales boost Time Warner profit")
    assert all(title and body and "\n" not in body for _, title, body in arts)
    assert len(rules) > 30000 and all("license_expression" in front or "is_false_positive" in front for _, front, _ in rules)
