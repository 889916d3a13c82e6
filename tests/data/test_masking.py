"""MLM masking: ratio, 80/10/10, specials untouched, whole words and spans kept together, reproducible per row."""

from __future__ import annotations

import numpy as np
import pytest

from encoderforge import EncoderforgeError
from encoderforge.data.masking import MaskingConfig, MaskVocab, mask_row
from encoderforge.tokenization import load_tokenizer

TEXT = (
    "the licensee shall indemnify the licensor notwithstanding anything hereinbefore contained; "
    "sublicensable, irrevocable and perpetual rights are granted hereunder. "
) * 4


@pytest.fixture(scope="module")
def setup(minilm_path):
    tok = load_tokenizer(minilm_path)
    vocab = MaskVocab.from_tokenizer(tok)
    one = tok.encode(TEXT).ids
    ids = np.array(one + one[:40] + [tok.token_to_id("[SEP]")], dtype=np.int64)  # two segments back to back
    ids[len(one)] = tok.token_to_id("[CLS]")
    return tok, vocab, ids


@pytest.mark.parametrize("strategy", ["token", "whole_word", "span", "mixed"])
@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.4])
def test_ratio_labels_and_specials(setup, strategy, ratio):
    tok, vocab, ids = setup
    n_cand = int((~vocab.special[ids]).sum())
    for seed in range(5):
        m = mask_row(ids, vocab, MaskingConfig(ratio=ratio, strategy=strategy), np.random.default_rng(seed))
        assert (np.diff(m.positions) > 0).all()  # sorted, unique
        assert (m.labels == ids[m.positions]).all()
        assert not vocab.special[ids[m.positions]].any()  # [CLS]/[SEP] never chosen
        changed = np.flatnonzero(m.input_ids != ids)
        assert set(changed.tolist()) <= set(m.positions.tolist())  # nothing outside the chosen positions changes
        assert abs(len(m.positions) - ratio * n_cand) <= (1 if strategy == "token" else 8)


def test_80_10_10(setup):
    tok, vocab, ids = setup
    masked = rand = kept = 0
    for seed in range(200):
        m = mask_row(ids, vocab, MaskingConfig(ratio=0.3), np.random.default_rng(seed))
        new = m.input_ids[m.positions]
        masked += (new == vocab.mask_id).sum()
        kept += (new == m.labels).sum()
        rand += ((new != vocab.mask_id) & (new != m.labels)).sum()
    total = masked + rand + kept
    assert abs(masked / total - 0.8) < 0.02 and abs(rand / total - 0.1) < 0.02 and abs(kept / total - 0.1) < 0.02


def test_whole_words_and_spans_stay_together(setup):
    tok, vocab, ids = setup
    toks = [tok.id_to_token(int(i)) for i in ids]
    assert any(t.startswith("##") for t in toks)  # the text really has multi-piece words
    word = np.full(len(ids), -1)
    w = -1
    for i, t in enumerate(toks):
        if t in ("[CLS]", "[SEP]"):
            continue
        if not t.startswith("##") or word[i - 1] == -1:
            w += 1
        word[i] = w
    for strategy in ("whole_word", "span"):
        for seed in range(20):
            m = mask_row(ids, vocab, MaskingConfig(ratio=0.3, strategy=strategy), np.random.default_rng(seed))
            chosen = set(m.positions.tolist())
            for wid in set(word[m.positions].tolist()):
                assert set(np.flatnonzero(word == wid).tolist()) <= chosen  # every piece of a chosen word

    # spans are contiguous runs of words: far fewer runs than for token masking at the same ratio
    def runs(pos):
        return 1 + int((np.diff(pos) > 1).sum())

    span = np.mean(
        [runs(mask_row(ids, vocab, MaskingConfig(0.3, "span"), np.random.default_rng(s)).positions) for s in range(20)]
    )
    token = np.mean(
        [runs(mask_row(ids, vocab, MaskingConfig(0.3, "token"), np.random.default_rng(s)).positions) for s in range(20)]
    )
    assert span < 0.6 * token


def test_reproducible_per_row(setup):
    _, vocab, ids = setup
    a = mask_row(ids, vocab, MaskingConfig(), np.random.default_rng([7, 123]))
    b = mask_row(ids, vocab, MaskingConfig(), np.random.default_rng([7, 123]))
    c = mask_row(ids, vocab, MaskingConfig(), np.random.default_rng([7, 124]))
    assert (a.input_ids == b.input_ids).all() and (a.positions == b.positions).all()
    assert not np.array_equal(a.positions, c.positions)


def test_config_errors_name_the_field():
    with pytest.raises(EncoderforgeError, match="masking.ratio"):
        MaskingConfig(ratio=0.9)
    with pytest.raises(EncoderforgeError, match="masking.strategy"):
        MaskingConfig(strategy="ngram")  # type: ignore[arg-type]
