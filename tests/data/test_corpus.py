"""Corpus preparation: cleaning, exact dedupe, held-out split, shards that round-trip, atomicity and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoderforge import EncoderforgeError
from encoderforge.data.corpus import CorpusSpec, clean, parse_corpus_arg, prepare_corpus
from encoderforge.data.packing import epoch_order
from encoderforge.data.shards import load_documents, read_manifest
from encoderforge.tokenization import load_tokenizer


def test_clean_strips_front_matter_and_controls():
    raw = "---\nkey: mit\ncategory: Permissive\n---\n\r\nPermission is\x07 hereby granted  \n\n\n\nto any person\n"
    assert clean(raw) == "Permission is hereby granted\n\nto any person"


def test_prepare_dedupes_splits_and_round_trips(tmp_path, legal_dir, small_tokenizer):
    jsonl = tmp_path / "notes.jsonl"
    rows = [
        {"text": "This agreement is governed by the laws of the state."},
        {"text": "THIS AGREEMENT is governed   by the laws of the state."},  # duplicate after normalisation
        {"text": "short"},
    ]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "shards"
    m = prepare_corpus(
        [CorpusSpec(str(legal_dir), name="legal", weight=2.0), CorpusSpec(str(jsonl))],
        small_tokenizer,
        out,
        eval_fraction=0.25,
        shard_tokens=20_000,
    )
    legal, notes = m["corpora"]
    assert legal["files"] == 61 and legal["duplicates"] >= 1  # zz-duplicate.LICENSE
    assert legal["documents"]["train"] + legal["documents"]["eval"] == 61 - legal["duplicates"] - legal["empty"]
    assert legal["documents"]["eval"] > 0 and len(legal["shards"]["train"]) > 1  # several 20k-token shards
    assert notes["duplicates"] == 1 and notes["empty"] == 1 and notes["name"] == "notes"
    assert m["dtype"] == "uint16" and m["vocab_size"] == 2000
    # shards decode back to exactly the tokenizer's ids of the cleaned documents
    tok = load_tokenizer(small_tokenizer)
    docs = load_documents(out, "train", tokenizer=tok)
    assert [d.name for d in docs] == ["legal", "notes"] and docs[0].weight == 2.0
    assert int(docs[0].lengths.sum()) == legal["tokens"]["train"]
    text = clean(rows[0]["text"])
    assert docs[1].tokens(0).tolist() == tok.encode(text, add_special_tokens=False).ids
    all_texts = {clean(p.read_text(encoding="utf-8")) for p in legal_dir.iterdir()}
    decoded = tok.decode(docs[0].tokens(3).tolist())
    assert any(
        " ".join(decoded.split()) == " ".join(tok.decode(tok.encode(t, add_special_tokens=False).ids).split()) for t in all_texts
    )


def test_same_input_same_split(tmp_path, legal_dir, small_tokenizer):
    a = prepare_corpus([CorpusSpec(str(legal_dir))], small_tokenizer, tmp_path / "a", eval_fraction=0.3)
    b = prepare_corpus([CorpusSpec(str(legal_dir))], small_tokenizer, tmp_path / "b", eval_fraction=0.3)
    assert a["corpora"][0]["documents"] == b["corpora"][0]["documents"]
    name = a["corpora"][0]["shards"]["eval"][0]
    assert (tmp_path / "a" / f"{name}.bin").read_bytes() == (tmp_path / "b" / f"{name}.bin").read_bytes()


def test_mixing_weights_set_documents_per_epoch(tmp_path, legal_dir, small_tokenizer):
    # exact dedupe works across corpora: a second copy of the same corpus has nothing left
    with pytest.raises(EncoderforgeError, match="61 read, 61 duplicates"):
        prepare_corpus(
            [CorpusSpec(str(legal_dir), name="up"), CorpusSpec(str(legal_dir), name="down")],
            small_tokenizer,
            tmp_path / "s",
            eval_fraction=0.0,
        )
    jsonl = tmp_path / "other.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"clause {i} of the license agreement applies"}) + "\n" for i in range(40)))
    prepare_corpus(
        [CorpusSpec(str(legal_dir), name="up", weight=2.0), CorpusSpec(str(jsonl), name="down", weight=0.5)],
        small_tokenizer,
        tmp_path / "t",
        eval_fraction=0.0,
    )
    docs = load_documents(tmp_path / "t")
    cs, ds = epoch_order(docs, epoch=0, seed=0)
    assert (cs == 0).sum() == 2 * len(docs[0]) and (cs == 1).sum() == 20
    up = np.bincount(ds[cs == 0], minlength=len(docs[0]))
    assert (up == 2).all()  # every up-sampled document exactly twice
    assert len(set(ds[cs == 1].tolist())) == 20  # a half without repeats


def test_interrupted_run_leaves_nothing(tmp_path, legal_dir, small_tokenizer):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "a.txt").write_text("A perfectly normal legal paragraph about warranties.\n", encoding="utf-8")
    (bad / "b.txt").write_bytes(b"\x7fELF\x00\x00binary")
    out = tmp_path / "out"
    with pytest.raises(EncoderforgeError, match=r"b\.txt: looks like a binary file"):
        prepare_corpus([CorpusSpec(str(bad))], small_tokenizer, out)
    assert not out.exists()  # no half-written shard directory
    with pytest.raises(EncoderforgeError, match="no manifest.json"):
        read_manifest(out)


def test_errors_name_the_problem(tmp_path, legal_dir, small_tokenizer, minilm_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("tiny\n", encoding="utf-8")
    with pytest.raises(EncoderforgeError, match="no documents left"):
        prepare_corpus([CorpusSpec(str(empty))], small_tokenizer, tmp_path / "o1")
    with pytest.raises(EncoderforgeError, match="no text files"):
        prepare_corpus([CorpusSpec(str(_mkdir(tmp_path / "nothing")))], small_tokenizer, tmp_path / "o2")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café license terms and conditions".encode("latin-1"))
    with pytest.raises(EncoderforgeError, match="latin.txt: not UTF-8"):
        prepare_corpus([CorpusSpec(str(latin))], small_tokenizer, tmp_path / "o3")
    bad_json = tmp_path / "x.jsonl"
    bad_json.write_text('{"body": "no text field here at all"}\n')
    with pytest.raises(EncoderforgeError, match=r"x.jsonl:1: no string field 'text'"):
        prepare_corpus([CorpusSpec(str(bad_json))], small_tokenizer, tmp_path / "o4")
    # a shard directory made with another tokenizer is refused, with or without --overwrite
    prepare_corpus([CorpusSpec(str(legal_dir))], small_tokenizer, tmp_path / "s")
    with pytest.raises(EncoderforgeError, match="another tokenizer"):
        prepare_corpus([CorpusSpec(str(legal_dir))], minilm_path, tmp_path / "s", overwrite=True)
    with pytest.raises(EncoderforgeError, match="another tokenizer"):
        load_documents(tmp_path / "s", tokenizer=load_tokenizer(minilm_path))
    with pytest.raises(EncoderforgeError, match="already prepared"):
        prepare_corpus([CorpusSpec(str(legal_dir))], small_tokenizer, tmp_path / "s")


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def test_parse_corpus_arg():
    s = parse_corpus_arg("data/legal/=legal:3")
    assert (s.path, s.name, s.weight) == ("data/legal/", "legal", 3.0)
    s = parse_corpus_arg("notes.jsonl:0.5")
    assert (s.path, s.name, s.weight) == ("notes.jsonl", "notes", 0.5)
    assert parse_corpus_arg("C:dir").weight == 1.0
    with pytest.raises(EncoderforgeError, match="weight must be > 0"):
        parse_corpus_arg("a.txt:0")


@pytest.mark.parametrize(
    "arg", ["a.txt=../../x", "a.txt=sub/x:2", "a.txt=/abs", "a.txt=..", "a.txt=a..b", "a.txt=spaced name", "a.txt=x\\y"]
)
def test_corpus_names_cannot_leave_the_output_dir(arg):
    """A corpus name becomes part of shard file names: `name=../../x` wrote shards outside --out."""
    bad = arg.split("=", 1)[1].rsplit(":2", 1)[0]
    with pytest.raises(EncoderforgeError) as e:
        parse_corpus_arg(arg)
    msg = str(e.value)
    assert f"corpus name {bad!r}" in msg and "letters, digits, '-', '_' and '.'" in msg and "\n" not in msg, msg


def test_default_corpus_names_are_safe(tmp_path):
    assert CorpusSpec("..").name == "corpus"
    assert CorpusSpec("../legal/").name == "legal"
    assert CorpusSpec("notes v2..final.jsonl").name == "notes_v2.final"
    assert parse_corpus_arg("data/legal/=legal-2.v1:3").name == "legal-2.v1"


def _tamper(out: Path, corpus: int, split: str, name: str) -> None:
    m = json.loads((out / "manifest.json").read_text())
    m["corpora"][corpus]["shards"][split][0] = name
    (out / "manifest.json").write_text(json.dumps(m))


def test_manifest_shard_names_must_stay_inside(tmp_path, legal_dir, small_tokenizer):
    out = tmp_path / "shards"
    prepare_corpus([CorpusSpec(str(legal_dir), name="legal")], small_tokenizer, out, eval_fraction=0.0)
    outside = tmp_path / "outside"
    outside.mkdir()
    first = json.loads((out / "manifest.json").read_text())["corpora"][0]["shards"]["train"][0]
    for suffix in (".bin", ".idx.npy"):  # a real shard sits where the tampered name points
        (outside / f"x{suffix}").write_bytes((out / f"{first}{suffix}").read_bytes())
    for name in ("../outside/x", str(outside / "x"), "sub/../../outside/x"):
        _tamper(out, 0, "train", name)
        with pytest.raises(EncoderforgeError) as e:
            load_documents(out)
        msg = str(e.value)
        assert f"shard {name!r}" in msg and "manifest.json" in msg and "\n" not in msg, msg
    with pytest.raises(EncoderforgeError, match="manifest.json: not valid JSON"):
        (out / "manifest.json").write_text("{")
        read_manifest(out)


def test_out_inside_a_corpus_dir_or_on_an_input_is_refused_before_work(tmp_path, legal_dir, small_tokenizer):
    """Shards written inside the corpus directory are read back as text (manifest.json) by the next run."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for p in sorted(legal_dir.iterdir())[:5]:
        (corpus / p.name).write_bytes(p.read_bytes())
    before = sorted(p.name for p in corpus.iterdir())
    with pytest.raises(EncoderforgeError, match=r"--out lies inside the input directory"):
        prepare_corpus([CorpusSpec(str(corpus))], small_tokenizer, corpus / "shards")
    with pytest.raises(EncoderforgeError, match=r"--out is the input"):
        prepare_corpus([CorpusSpec(str(corpus))], small_tokenizer, corpus, overwrite=True)
    with pytest.raises(EncoderforgeError, match=r"--out holds the input"):
        prepare_corpus([CorpusSpec(str(corpus))], small_tokenizer, tmp_path, overwrite=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(EncoderforgeError, match=r"notes.txt: is a file; --out needs a directory"):
        prepare_corpus([CorpusSpec(str(corpus))], small_tokenizer, notes, overwrite=True)
    assert notes.read_text() == "my notes\n"
    assert sorted(p.name for p in corpus.iterdir()) == before and not list(tmp_path.glob(".*tmp-*"))


def test_cli_data_prepare_errors_are_one_line(tmp_path, legal_dir, small_tokenizer):
    from typer.testing import CliRunner

    from encoderforge.cli.pretrain import data_app

    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(data_app, ["prepare", f"{legal_dir}=../../escaped", "--tokenizer", str(small_tokenizer), "--out", str(out)])
    assert r.exit_code == 1 and r.stderr.startswith("error: corpus name '../../escaped'"), r.output
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output
    r = runner.invoke(
        data_app, ["prepare", str(legal_dir), "--tokenizer", str(small_tokenizer), "--out", str(legal_dir / "shards")]
    )
    assert r.exit_code == 1 and "--out lies inside the input directory" in r.stderr, r.output
    assert not out.exists() and not list(tmp_path.parent.glob("escaped*")) and not (legal_dir / "shards").exists()
