"""LateIndex (ColBERT token index): with every centroid probed, search equals exhaustive MaxSim over all documents
(on the index's decompressed vectors exactly, on the float vectors up to the 8-bit codes); a few probes keep high
recall; save/load round trip; a corrupt file or a query of the wrong width is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.index.dense import DenseIndex
from encoderforge.index.late import LateIndex, default_nlist
from encoderforge.model import checkpoint
from encoderforge.tasks.colbert import ColBERTModel
from encoderforge.tasks.sequences import encode_texts
from encoderforge.tokenization import load_tokenizer


def token_matrices(model: ColBERTModel, tok, texts: list[str]) -> list[np.ndarray]:
    """(L_i, 128) unit token vectors of each text, through the ColBERT model."""
    ids = encode_texts(tok, [(t,) for t in texts], 96).ids
    with torch.no_grad():
        out = model(torch.tensor([x for s in ids for x in s]), torch.tensor([len(s) for s in ids]))
    return [out.hidden[i, : len(s)].numpy() for i, s in enumerate(ids)]


@pytest.fixture(scope="module")
def corpus(minilm_path, bbc_docs):
    """MiniLM + an untrained projection: token matrices of 60 real BBC openings and 12 queries (their first 6-10 words, and 4 short other texts)."""
    torch.manual_seed(0)
    model = ColBERTModel(checkpoint.load(minilm_path).encoder).eval()
    tok = load_tokenizer(minilm_path)
    docs = token_matrices(model, tok, [d["text"] for d in bbc_docs])
    words = [d["text"].split() for d in bbc_docs[::8]]
    texts = [" ".join(w[: 6 + i % 5]) for i, w in enumerate(words)]
    texts += ["oil prices", "the election campaign", "film awards", "mobile phone sales"]
    queries = token_matrices(model, tok, texts)
    return [d["id"] for d in bbc_docs], docs, queries


def exhaustive(queries: list[np.ndarray], docs: list[np.ndarray], k: int) -> tuple[list[list[int]], np.ndarray]:
    """Top-k document numbers and the full (Q, n) MaxSim matrix, by einsum + max + sum over every document."""
    s = np.array([[np.einsum("qc,tc->qt", q, d).max(axis=1).sum() for d in docs] for q in queries])
    return [list(np.argsort(-row, kind="stable")[:k]) for row in s], s


def test_all_centroids_equal_exhaustive_maxsim(corpus):
    ids, docs, queries = corpus
    idx = LateIndex.build(ids, docs, [{"n": i} for i in range(len(ids))])
    tokens = sum(len(d) for d in docs)
    assert idx.nlist == default_nlist(tokens) == tokens // 39 and idx.params["bits"] == 8  # 2^9 capped at N / 39
    hits = idx.search(queries, k=10, nprobe=idx.nlist)
    # exactly exhaustive MaxSim over what the index stores (its decompressed vectors)
    top, s = exhaustive(queries, [idx.reconstruct(i) for i in ids], 10)
    assert hits.ids == [[ids[j] for j in row] for row in top]
    np.testing.assert_allclose(np.array(hits.scores), np.take_along_axis(s, np.array(top), 1), rtol=1e-5)
    # and, up to the 8-bit residual codes, exhaustive MaxSim over the float token vectors
    top_f, s_f = exhaustive(queries, docs, 10)
    assert np.abs(s - s_f).max() < 0.02 * np.abs(s_f).max()
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, top_f)])
    assert overlap >= 0.9
    assert [row[0] for row in top] == [row[0] for row in top_f]
    assert idx.meta["bbc-003"] == {"n": 3}


def test_few_probes_and_centroid_pruning_keep_recall(corpus):
    ids, docs, queries = corpus
    idx = LateIndex.build(ids, docs)
    full = idx.search(queries, k=10, nprobe=idx.nlist).ids

    def recall(**kw) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx.search(queries, k=10, **kw).ids, full)]))

    assert recall(nprobe=1) == 1.0  # [CLS]/[SEP] cells hold every document: all 60 stay candidates
    assert len(idx.candidates(queries[0][1:2], 1)) < len(ids)  # a content token's cell holds a few
    # PLAID's centroid interaction keeps 30 of 60 for the exact rerank (0.875 measured, toy: MiniLM + a random projection)
    assert recall(nprobe=1, ndocs=30) >= 0.8
    with pytest.raises(EncoderforgeError, match="ndocs must be >= k"):
        idx.search(queries, k=10, ndocs=5)


def test_four_bit_codes_are_smaller(corpus):
    ids, docs, queries = corpus
    eight, four = LateIndex.build(ids, docs), LateIndex.build(ids, docs, bits=4)
    tokens = sum(len(d) for d in docs)
    coarse = eight.ivf.coarse_code_size()  # the centroid number: 1 byte for up to 256 centroids
    assert eight.codes.shape == (tokens, coarse + 128) and four.codes.shape == (tokens, coarse + 64)
    assert four.size_mb < eight.size_mb < 0.3 * sum(d.nbytes for d in docs) / 2**20
    top4 = four.search(queries, k=10, nprobe=four.nlist).ids
    top8 = eight.search(queries, k=10, nprobe=eight.nlist).ids
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top4, top8)]) >= 0.8


def test_save_load_round_trip_and_corruption(corpus, tmp_path):
    ids, docs, queries = corpus
    idx = LateIndex.build(ids, docs, [{"n": i} for i in range(len(ids))])
    hits = idx.search(queries, k=5)
    idx.save(tmp_path / "late")
    back = LateIndex.load(tmp_path / "late")
    assert back.ids == ids and back.meta["bbc-007"] == {"n": 7} and back.params == idx.params
    assert back.search(queries, k=5) == hits
    m = json.loads((tmp_path / "late" / "manifest.json").read_text())
    assert m["kind"] == "colbert" and m["count"] == 60 and m["params"]["tokens"] == sum(len(d) for d in docs)
    with pytest.raises(EncoderforgeError, match="a 'colbert' index, not a dense one"):
        DenseIndex.load(tmp_path / "late")
    codes = tmp_path / "late" / "codes.npy"
    raw = bytearray(codes.read_bytes())
    raw[-1] ^= 0xFF
    codes.write_bytes(bytes(raw))
    with pytest.raises(EncoderforgeError) as e:
        LateIndex.load(tmp_path / "late")
    msg = str(e.value)
    assert "\n" not in msg and "codes.npy: checksum differs" in msg and "LateIndex.build(ids, token_matrices).save" in msg


def test_bad_input_is_one_line_errors(corpus):
    ids, docs, queries = corpus
    idx = LateIndex.build(ids[:20], docs[:20])
    with pytest.raises(EncoderforgeError, match=r"^query 1: token vectors of shape \(5, 64\), the index holds 128-d") as e:
        idx.search([queries[0], np.ones((5, 64), np.float32)])
    assert "\n" not in str(e.value)
    with pytest.raises(EncoderforgeError, match="id 'bbc-000' occurs twice"):
        LateIndex.build(["bbc-000", "bbc-000"], docs[:2])
    with pytest.raises(EncoderforgeError, match="2 ids, 1 token matrices"):
        LateIndex.build(ids[:2], docs[:1])
    with pytest.raises(EncoderforgeError, match="'nope' is not in the index"):
        idx.reconstruct("nope")
