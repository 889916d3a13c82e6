"""Packing: rows are full, every token is used once, and packed segments never attend to each other."""

from __future__ import annotations

import numpy as np
import torch

from encoderforge.data.corpus import CorpusSpec, prepare_corpus
from encoderforge.data.packing import iter_rows, pack, pack_rows, rank_slice, row_tokens
from encoderforge.data.shards import load_documents
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.padding import layout_from_lengths


def test_pack_rows_covers_every_token_once_within_max_len():
    lengths = np.array([5, 300, 1, 40, 17, 130, 2])
    rows = list(pack_rows(lengths, 64))
    covered = {k: [] for k in range(len(lengths))}
    for row in rows:
        assert sum(b - a + 2 for _, a, b in row) <= 64
        for k, a, b in row:
            covered[k].append((a, b))
    for k, n in enumerate(lengths):  # contiguous, in order, complete
        spans = covered[k]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(x[1] == y[0] for x, y in zip(spans, spans[1:]))
    used = sum(sum(b - a + 2 for _, a, b in row) for row in rows)
    assert used / (len(rows) * 64) > 0.9  # little room wasted
    # a document is only cut after >= 16 tokens (min_piece): no tiny fragments without context
    assert all(b - a >= 16 for row in rows for k, a, b in row if b < lengths[k])


def test_rows_stream_is_resumable_and_rank_slices(tmp_path, legal_dir, small_tokenizer):
    prepare_corpus([CorpusSpec(str(legal_dir))], small_tokenizer, tmp_path / "s", eval_fraction=0.0)
    docs = load_documents(tmp_path / "s")
    stream = iter_rows(docs, 128, seed=3)
    first = [next(stream) for _ in range(40)]
    resumed = iter_rows(docs, 128, seed=3, start=25)
    assert [next(resumed) for _ in range(15)] == first[25:]
    assert [r.index for r in first] == list(range(40))
    assert rank_slice(first[:8], 1, 2) == first[4:8]
    # a second epoch reshuffles: the stream is endless and differs from epoch 0
    total = sum(1 for _ in iter_rows(docs, 128, seed=3, epochs=1))
    nxt = list(iter_rows(docs, 128, seed=3, start=total, epochs=2))
    assert len(nxt) == total and nxt[0].pieces != first[0].pieces


def test_packed_forward_equals_separate_forwards(tmp_path, legal_dir, small_tokenizer):
    """No cross-document attention: each [CLS] ... [SEP] segment of a packed batch gives the same hidden states
    as running that segment alone."""
    prepare_corpus([CorpusSpec(str(legal_dir))], small_tokenizer, tmp_path / "s", eval_fraction=0.0)
    docs = load_documents(tmp_path / "s")
    rows = [r for _, r in zip(range(60), iter_rows(docs, 96, seed=0))]
    rows = [r for r in rows if len(r.pieces) > 1][:3] + rows[:1]  # rows where documents really share a row
    segs = [s for r in rows for s in row_tokens(docs, r, cls_id=2, sep_id=3)]
    assert any(len(r.pieces) > 1 for r in rows) and len(segs) >= 3 and all(s[0] == 2 and s[-1] == 3 for s in segs)
    packed = pack(segs)
    assert packed.input_ids.shape == (sum(len(s) for s in segs),) and packed.lengths.tolist() == [len(s) for s in segs]
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=2000, attention="varlen")).eval()
    with torch.no_grad():
        out = enc.forward_unpadded(packed.input_ids, layout_from_lengths(packed.lengths))  # (N, C)
        start = 0
        for s in segs:
            alone = enc(torch.from_numpy(s)[None])[0]  # (T, C)
            torch.testing.assert_close(out[start : start + len(s)], alone, atol=1e-5, rtol=1e-5)
            start += len(s)
