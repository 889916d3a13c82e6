"""Windows, the truncation helper, chunk pooling and resume-exact epochs shared by the fine-tuning tasks."""

from __future__ import annotations

import itertools

import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.tasks.pooled import pool_chunks
from encoderforge.tasks.sequences import encode_texts, epoch_steps, split_pairs, truncation
from encoderforge.tokenization import load_tokenizer


def test_long_text_becomes_overlapping_windows(minilm_path, bbc_rows):
    tok = load_tokenizer(minilm_path)
    text = bbc_rows[0][1]
    pieces = tok.encode(text, add_special_tokens=False).ids
    assert len(pieces) > 60
    enc = encode_texts(tok, [(text,), ("short one",)], 32, max_chunks=100, stride=10)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    windows = [w for w, d in zip(enc.ids, enc.doc) if d == 0]
    assert all(w[0] == cls and w[-1] == sep and len(w) <= 32 for w in windows)
    step = 30 - 10  # body - overlap
    for c, w in enumerate(windows):
        assert w[1:-1] == pieces[c * step : c * step + 30]
    assert windows[-1][1:-1][-1] == pieces[-1]  # nothing lost at the end
    assert windows[0][-11:-1] == windows[1][1:11]  # consecutive windows overlap by `stride` tokens
    assert enc.doc[-1] == 1 and enc.num_docs == 2 and enc.truncated == 0
    head = encode_texts(tok, [(text,)], 32, max_chunks=2, stride=10)
    assert len(head.ids) == 2 and head.truncated == 1
    assert tok.truncation is None  # the tokenizer is left as it was


def test_truncation_helper_restores_what_was_set(minilm_path):
    """Tasks encode with the Engine's tokenizer, which truncates: inside the block the task's setting holds, after
    it the Engine's is back (also when encoding fails)."""
    tok = load_tokenizer(minilm_path)
    tok.enable_truncation(16, stride=2)
    before = dict(tok.truncation)
    long = "the licensee shall " * 40
    with truncation(tok):
        assert len(tok.encode(long).ids) > 16
    with truncation(tok, 8, strategy="only_second"):
        assert tok.truncation["max_length"] == 8 and tok.truncation["strategy"] == "only_second"
    assert tok.truncation == before
    with pytest.raises(RuntimeError), truncation(tok):
        raise RuntimeError("encoding failed")
    assert tok.truncation == before and len(tok.encode(long).ids) == 16
    plain = load_tokenizer(minilm_path)
    with truncation(plain, 8):
        pass
    assert plain.truncation is None


def test_split_pairs_names_the_bad_line():
    assert split_pairs(["a", "b"], 1) == [("a",), ("b",)]
    assert split_pairs(["q\tc"], 2) == [("q", "c")]
    with pytest.raises(EncoderforgeError, match="line 2: this model reads sentence pairs"):
        split_pairs(["q\tc", "no tab here"], 2)


def test_pool_chunks_mean_and_max():
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 5.0]])
    doc = torch.tensor([0, 0, 1])
    assert pool_chunks(logits, doc, 2, "mean").tolist() == [[2.0, 1.0], [5.0, 5.0]]
    assert pool_chunks(logits, doc, 2, "max").tolist() == [[3.0, 2.0], [5.0, 5.0]]
    assert pool_chunks(logits[:2], torch.tensor([0, 1]), 2, "mean") is not None


def test_epochs_cover_every_example_and_resume_exactly():
    stream = [sum(m, []) for m in itertools.islice(epoch_steps(10, 4, 2, seed=3, start_step=0), 9)]  # 3 steps/epoch
    for e in range(3):
        epoch = stream[3 * e : 3 * e + 3]
        assert sorted(sum(epoch, [])) == list(range(10))  # each epoch: every example once (last batch short)
    assert stream[0:3] != stream[3:6]  # a new order each epoch
    resumed = [sum(m, []) for m in itertools.islice(epoch_steps(10, 4, 2, seed=3, start_step=4), 5)]
    assert resumed == stream[4:9]
    ranks = [next(epoch_steps(10, 4, 0, seed=3, start_step=0, rank=r, world=2)) for r in (0, 1)]
    assert sorted(sum(ranks[0] + ranks[1], [])) == sorted(stream[0])


def test_pair_truncation_equals_the_tokenizers_longest_first(minilm_path, bbc_rows):
    """Pairs are cut by our closed-form longest-first (each side tokenized alone) exactly as the tokenizers library's
    own pair truncation cuts them, for short, long and tied sides."""
    from tokenizers import Tokenizer

    from encoderforge.tasks.sequences import encode_texts, longest_first

    tok = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    tok.no_padding()
    texts = [t for _, t in bbc_rows[:12]]
    pairs = [(texts[i][: 40 + 90 * i], texts[-1 - i][: 700 - 50 * i]) for i in range(12)] + [("a b c", "d e f")]
    for max_length in (16, 17, 64, 129):
        got = encode_texts(tok, pairs, max_length)
        tok.enable_truncation(max_length, strategy="longest_first")
        want = [e.ids for e in tok.encode_batch(pairs)]
        tok.no_truncation()
        assert got.ids == want, max_length
        assert got.truncated == sum(len(w) == max_length for w in want)
    assert longest_first(10, 10, 15) == (7, 8) and longest_first(3, 100, 15) == (3, 12) and longest_first(2, 3, 9) == (2, 3)
    assert longest_first(100, 9, 15) == (8, 7) and longest_first(100, 7, 15) == (8, 7)
