"""Tokenizer training, vocabulary extension, embedding growth and stats, on real legal text (licensedcode-data)."""

from __future__ import annotations

import json

import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.tokenization import load_tokenizer
from encoderforge.tokenization.extend import (
    extend_vocabulary,
    grow_embeddings,
    suggest_terms,
)
from encoderforge.tokenization.stats import tokenizer_stats
from encoderforge.tokenization.train import save_tokenizer, train_wordpiece

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split(license_texts):
    """A quarter of the license texts to train on (~4 MB, ~1.5 s) and a disjoint ~2% to measure on."""
    return license_texts[1::4], license_texts[0::50]


@pytest.fixture(scope="module")
def legal_tok(split):
    return train_wordpiece(split[0], vocab_size=8000)


@pytest.fixture(scope="module")
def minilm_tok(minilm_path):
    return load_tokenizer(minilm_path)


@pytest.fixture(scope="module")
def legal_terms(split, minilm_tok):
    """The 200 training-split words MiniLM splits worst (>= 3 pieces), most frequent first."""
    return suggest_terms(split[0], minilm_tok, 200)


def test_trained_vocab_is_bert_compatible(legal_tok):
    assert legal_tok.get_vocab_size() == 8000
    assert [legal_tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    enc = legal_tok.encode("The Licensor grants a sublicense.")
    assert enc.tokens == ["[CLS]", "the", "licensor", "grants", "a", "sublicense", ".", "[SEP]"]
    pair = legal_tok.encode("a", "b")
    assert pair.tokens == ["[CLS]", "a", "[SEP]", "b", "[SEP]"] and pair.type_ids == [0, 0, 0, 1, 1]


def test_save_roundtrip_loads_everywhere(legal_tok, tmp_path):
    out = save_tokenizer(legal_tok, tmp_path / "tok")
    assert sorted(p.name for p in out.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 8000 and vocab[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True
    text = "Licensee shall indemnify the Licensor; see Section 4(b)."
    want = legal_tok.encode(text).ids
    assert load_tokenizer(out).encode(text).ids == want
    assert load_tokenizer(out / "vocab.txt").encode(text).ids == want  # vocab.txt alone rebuilds the same tokenizer
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf.pad_token_id == 0 and hf(text)["input_ids"] == want


def test_cased_training_keeps_case(split, tmp_path):
    tok = train_wordpiece(split[0][:40], vocab_size=1500, lowercase=False)
    tokens = tok.encode("Licensor licensor").tokens
    assert tokens[1] == "Licensor" and "licensor" not in tokens
    out = save_tokenizer(tok, tmp_path / "cased")
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False
    assert load_tokenizer(out / "vocab.txt").encode("Licensor").ids == tok.encode("Licensor").ids


def test_extend_adds_whole_words_only(minilm_tok):
    new, added = extend_vocabulary(minilm_tok, ["licensor", "Indemnification", "the", "licensor"])
    assert [(a.term, a.id) for a in added] == [("licensor", 30522), ("indemnification", 30523)]
    assert added[0].old_tokens == ("li", "##cens", "##or")
    assert added[0].old_ids == tuple(minilm_tok.encode("licensor", add_special_tokens=False).ids)
    assert new.get_vocab_size() == 30524 and minilm_tok.get_vocab_size() == 30522  # the input is untouched
    assert new.encode("Licensor").ids == [101, 30522, 102]
    assert new.encode("licensors", add_special_tokens=False).tokens == ["licensor", "##s"]
    # a vocabulary entry only matches at a word start, unlike an "added token" that would match inside words
    inside = "sublicensor"
    assert new.encode(inside).ids == minilm_tok.encode(inside).ids


def test_extend_rejects_phrases(minilm_tok):
    with pytest.raises(EncoderforgeError, match="'open source' is not a single word"):
        extend_vocabulary(minilm_tok, ["open source"])


def test_grow_embeddings_rows_are_exact_means(minilm_tok):
    enc = Encoder(preset("bert-tiny", vocab_size=30522)).eval()
    old = enc.embeddings.tok.weight.detach().clone()  # (V, C)
    _, added = extend_vocabulary(minilm_tok, ["licensor", "indemnification", "sublicensable"])
    grow_embeddings(enc, added)
    w = enc.embeddings.tok.weight.detach()  # (V + 3, C)
    assert w.shape == (30525, 128) and enc.cfg.vocab_size == 30525
    assert torch.equal(w[:30522], old)
    for a in added:
        assert len(a.old_ids) >= 3
        assert torch.equal(w[a.id], old[list(a.old_ids)].mean(dim=0))
    out = enc(torch.tensor([[101, 30522, 30524, 102]]), torch.ones(1, 4, dtype=torch.long))
    assert out.shape == (1, 4, 128) and torch.isfinite(out).all()


def test_suggest_terms_are_frequent_badly_split_words(legal_terms, minilm_tok):
    terms = legal_terms
    assert len(terms) == 200 == len(set(terms)) and "licensor" in terms[:5]
    pieces = minilm_tok.encode_batch([[t] for t in terms], is_pretokenized=True, add_special_tokens=False)
    assert all(len(p.ids) >= 3 for p in pieces)


def test_domain_and_extended_tokenizers_beat_minilm_on_heldout_legal_text(split, legal_tok, minilm_tok, legal_terms):
    train, held = split
    assert not set(train) & set(held)
    domain = tokenizer_stats(held, minilm_tok, legal_tok, names=("minilm", "legal-8k"))
    extended, _ = extend_vocabulary(minilm_tok, legal_terms)
    ext = tokenizer_stats(held, minilm_tok, extended, names=("minilm", "minilm+200"))
    assert domain.words == ext.words > 50_000
    assert domain.b.tokens_per_word < domain.a.tokens_per_word and domain.fewer_tokens_pct > 3
    assert ext.b.tokens_per_word < ext.a.tokens_per_word and ext.fewer_tokens_pct > 2
    assert ext.b.split_rate < ext.a.split_rate and ext.b.vocab_size == 30722
    table = domain.to_markdown()
    assert "| a: minilm | 30,522 |" in table and "fewer tokens than a" in table


def test_stats_counts_exactly(minilm_tok):
    extended, _ = extend_vocabulary(minilm_tok, ["licensor"])
    r = tokenizer_stats(["licensor licensor the \u2603"], minilm_tok, extended)
    # minilm: li ##cens ##or x2, the, [UNK] = 8 tokens; extended: licensor x2, the, [UNK] = 4
    assert (r.texts, r.words, r.a.tokens, r.b.tokens) == (1, 4, 8, 4)
    assert r.a.split_rate == 0.5 and r.b.split_rate == 0.0 and r.a.unknown_rate == r.b.unknown_rate == 0.25
    assert r.fewer_tokens_pct == 50.0 and r.a.tokens_per_word == 2.0


def test_bad_corpus_errors_name_the_problem(tmp_path, minilm_tok):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\nLizenzgeb\xfchr\n".encode("latin-1"))
    with pytest.raises(EncoderforgeError, match=r"latin1.txt: line 2: not valid UTF-8 \(byte offset 20, 0xfc\)"):
        train_wordpiece([bad], vocab_size=100)
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n")
    with pytest.raises(EncoderforgeError, match="empty corpus"):
        train_wordpiece([empty], vocab_size=100)
    with pytest.raises(EncoderforgeError, match="nope.txt: no such file"):
        train_wordpiece([tmp_path / "nope.txt"], vocab_size=100)
    with pytest.raises(EncoderforgeError, match="--vocab-size 5 is too small"):
        train_wordpiece([empty], vocab_size=5)
    with pytest.raises(EncoderforgeError, match="no corpus files"):
        suggest_terms([], minilm_tok, 10)
