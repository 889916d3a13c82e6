"""`encoderforge tokenizer train|extend|stats` through Typer's CliRunner on the sub-app itself."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from encoderforge.cli.tokenizer import app
from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.tokenization import load_tokenizer

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, minilm_path):
    """A bert-tiny encoderforge checkpoint with MiniLM's tokenizer and an MLM bias (small, so tests stay fast)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoint.save(
        Encoder(preset("bert-tiny", vocab_size=30522)), path, tokenizer_dir=minilm_path, extra={"mlm.bias": torch.randn(30522)}
    )
    return path


def _one_line_error(r, text: str) -> None:
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and text in r.stderr, r.stderr
    assert "Traceback" not in r.output


def test_train_writes_a_loadable_tokenizer(license_texts, tmp_path):
    out = tmp_path / "legal"
    r = runner.invoke(app, ["train", *map(str, license_texts[::20]), "--vocab-size", "3000", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"wrote {out}: WordPiece vocabulary of 3,000 tokens"
    tok = load_tokenizer(out)
    assert tok.get_vocab_size() == 3000 and tok.token_to_id("[PAD]") == 0
    assert tok.encode("Licensor").tokens == ["[CLS]", "licensor", "[SEP]"]
    r = runner.invoke(app, ["train", str(license_texts[0]), "--vocab-size", "3000", "--out", str(out)])
    _one_line_error(r, "already exists; pass --overwrite")


def test_train_cased_from_directory(tmp_path, license_texts):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for p in license_texts[::100]:
        (corpus / p.name).write_bytes(p.read_bytes())
    r = runner.invoke(
        app, ["train", str(corpus), "--vocab-size", "800", "--cased", "--min-frequency", "3", "--out", str(tmp_path / "cased")]
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cased" / "tokenizer_config.json").read_text())["do_lower_case"] is False


@pytest.mark.parametrize("case", ["latin1", "empty", "missing"])
def test_train_bad_input_is_one_line_and_leaves_nothing(tmp_path, case):
    f = tmp_path / "in.txt"
    if case == "latin1":
        f.write_bytes("Lizenz\nGeb\xfchr\n".encode("latin-1"))
        expect = "in.txt: line 2: not valid UTF-8 (byte offset 10"
    elif case == "empty":
        f.write_text("\n")
        expect = "empty corpus"
    else:
        expect = "in.txt: no such file"
    out = tmp_path / "new" / "tok"
    r = runner.invoke(app, ["train", str(f), "--vocab-size", "500", "--out", str(out)])
    _one_line_error(r, expect)
    assert not (tmp_path / "new").exists()


def test_extend_with_terms_writes_a_full_checkpoint(tiny_ckpt, tmp_path):
    terms = tmp_path / "terms.txt"
    terms.write_text("# legal words\nlicensor\nIndemnification\n\nthe\n", encoding="utf-8")
    out = tmp_path / "ext"
    r = runner.invoke(app, ["extend", "--model", str(tiny_ckpt), "--terms", str(terms), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "added 2 words (ids 30522..30523): licensor, indemnification" in r.stdout
    src, new = checkpoint.load(tiny_ckpt), checkpoint.load(out)
    assert new.source == "encoderforge" and new.encoder.cfg.vocab_size == 30524
    tok = load_tokenizer(out)
    assert tok.encode("Licensor").ids == [101, 30522, 102] and tok.token_to_id("indemnification") == 30523
    old_ids = load_tokenizer(tiny_ckpt).encode("licensor", add_special_tokens=False).ids
    w_old, w_new = src.encoder.embeddings.tok.weight, new.encoder.embeddings.tok.weight
    assert torch.equal(w_new[30522], w_old[old_ids].mean(dim=0)) and torch.equal(w_new[:30522], w_old)
    assert torch.equal(new.extra["mlm.bias"][30522], src.extra["mlm.bias"][old_ids].mean())
    assert (out / "vocab.txt").read_text(encoding="utf-8").splitlines()[30522:] == ["licensor", "indemnification"]


def test_extend_hf_dir_from_corpus(tiny_ckpt, tmp_path, license_texts):
    hf = checkpoint.export_hf(checkpoint.load(tiny_ckpt).encoder, tmp_path / "hf", tokenizer_dir=tiny_ckpt)
    out = tmp_path / "ext"
    corpus = [a for p in license_texts[::40] for a in ("--from-corpus", str(p))]
    r = runner.invoke(app, ["extend", "--model", str(hf), *corpus, "--top", "20", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "added 20 words (ids 30522..30541)" in r.stdout
    assert checkpoint.load(out).encoder.cfg.vocab_size == 30542
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    old = load_tokenizer(hf)
    assert all(len(old.encode(w, add_special_tokens=False).ids) >= 3 for w in vocab[30522:])


def test_extend_bad_input(tiny_ckpt, tmp_path):
    out = tmp_path / "ext"
    terms = tmp_path / "terms.txt"
    terms.write_text("licensor\n")
    r = runner.invoke(app, ["extend", "--model", str(tiny_ckpt), "--out", str(out)])
    _one_line_error(r, "pass exactly one of --terms FILE or --from-corpus FILES")
    r = runner.invoke(app, ["extend", "--model", str(tmp_path / "nope"), "--terms", str(terms), "--out", str(out)])
    _one_line_error(r, "nope: no such directory")
    terms.write_text("the\nof\n")
    r = runner.invoke(app, ["extend", "--model", str(tiny_ckpt), "--terms", str(terms), "--out", str(out)])
    _one_line_error(r, "all 2 terms are already in the vocabulary")
    assert not out.exists()


def test_stats_prints_table_and_json(minilm_path, license_texts, tmp_path):
    out = tmp_path / "legal"
    assert runner.invoke(app, ["train", *map(str, license_texts[1::8]), "--vocab-size", "8000", "--out", str(out)]).exit_code == 0
    held = [str(p) for p in license_texts[0::100]]
    r = runner.invoke(app, ["stats", "--a", str(minilm_path), "--b", str(out), *held, "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert f"| a: {minilm_path} | 30,522 |" in r.stdout and f"| b: {out} | 8,000 |" in r.stdout
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["texts"] == len(held) and d["b"]["tokens_per_word"] < d["a"]["tokens_per_word"]
    assert f"b needs {d['fewer_tokens_pct']:.1f}% fewer tokens than a" in r.stdout
    r = runner.invoke(app, ["stats", "--a", str(minilm_path), "--b", str(tmp_path / "none"), *held])
    _one_line_error(r, "none: no such tokenizer file")


def test_extend_from_corpus_takes_a_shell_expanded_glob(tiny_ckpt, tmp_path, license_texts):
    """README: `--from-corpus corpus/*.txt` — the shell hands over every file after the one option."""
    files = [str(p) for p in license_texts[::40]]
    assert len(files) >= 2
    out = tmp_path / "ext"
    r = runner.invoke(app, ["extend", "--model", str(tiny_ckpt), "--from-corpus", *files, "--top", "20", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "added 20 words (ids 30522..30541)" in r.stdout
    # the same words as the repeated-option form: every file was read
    again = tmp_path / "again"
    repeated = [a for f in files for a in ("--from-corpus", f)]
    assert runner.invoke(app, ["extend", "--model", str(tiny_ckpt), *repeated, "--top", "20", "--out", str(again)]).exit_code == 0
    assert (out / "vocab.txt").read_text() == (again / "vocab.txt").read_text()
    # files with no --from-corpus before them are a mistake, not silently ignored
    terms = tmp_path / "terms.txt"
    terms.write_text("licensor\n")
    r = runner.invoke(app, ["extend", "--model", str(tiny_ckpt), "--terms", str(terms), *files[:2], "--out", str(tmp_path / "x")])
    _one_line_error(r, "corpus files go after --from-corpus")
    assert not (tmp_path / "x").exists()


def test_outputs_that_would_destroy_inputs_are_refused_before_work(tiny_ckpt, tmp_path, license_texts):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for p in license_texts[:3]:
        (corpus / p.name).write_bytes(p.read_bytes())
    before = sorted(p.name for p in corpus.iterdir())
    # train: --out on the corpus directory (with --overwrite it used to replace the corpus by the tokenizer)
    r = runner.invoke(app, ["train", str(corpus), "--vocab-size", "500", "--out", str(corpus), "--overwrite"])
    _one_line_error(r, "--out is the input")
    r = runner.invoke(app, ["train", str(corpus), "--vocab-size", "500", "--out", str(corpus / "tok")])
    _one_line_error(r, "--out lies inside the input directory")
    assert sorted(p.name for p in corpus.iterdir()) == before
    # train: --out is an existing file
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    r = runner.invoke(app, ["train", str(corpus), "--vocab-size", "500", "--out", str(notes), "--overwrite"])
    _one_line_error(r, "notes.txt: is a file; --out needs a directory path")
    assert notes.read_text() == "keep me\n"
    # extend: --out on the model itself, or inside the corpus directory
    mtime = (tiny_ckpt / "model.safetensors").stat().st_mtime_ns
    r = runner.invoke(
        app, ["extend", "--model", str(tiny_ckpt), "--from-corpus", str(corpus), "--out", str(tiny_ckpt), "--overwrite"]
    )
    _one_line_error(r, "--out is the input")
    r = runner.invoke(app, ["extend", "--model", str(tiny_ckpt), "--from-corpus", str(corpus), "--out", str(corpus / "ext")])
    _one_line_error(r, "--out lies inside the input directory")
    assert (tiny_ckpt / "model.safetensors").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in corpus.iterdir()) == before
    # stats: --json on a directory or on an input file
    r = runner.invoke(app, ["stats", "--a", str(tiny_ckpt), "--b", str(tiny_ckpt), str(notes), "--json", str(corpus)])
    _one_line_error(r, "corpus: is a directory; --json needs a file path")
    r = runner.invoke(app, ["stats", "--a", str(tiny_ckpt), "--b", str(tiny_ckpt), str(notes), "--json", str(notes)])
    _one_line_error(r, "--json is the input")
    assert notes.read_text() == "keep me\n"
