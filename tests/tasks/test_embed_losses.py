"""Parity of the embedding losses with sentence-transformers: on the same vectors (exact), and end to end on the same
real MiniLM weights and texts (our packed encoder + pooling vs SentenceTransformer's forward, <= 1e-5)."""

from __future__ import annotations

import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.tasks.embed_losses import cosent, matryoshka, mnrl

st = pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer, losses  # noqa: E402


@pytest.fixture(scope="module")
def st_model(minilm_path):
    return SentenceTransformer(str(minilm_path), device="cpu")


def vectors(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("symmetric", [False, True])
def test_mnrl_equals_sentence_transformers_on_the_same_vectors(st_model, k, symmetric):
    b, c = 6, 16
    q, p = vectors(b, c, seed=1), vectors(b, c, seed=2)
    negs = [vectors(b, c, seed=10 + j) for j in range(k)]
    if symmetric:
        ref = losses.MultipleNegativesRankingLoss(
            st_model, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"
        )
    else:
        ref = losses.MultipleNegativesRankingLoss(st_model)
    want = ref.compute_loss_from_embeddings([q, p, *negs], torch.zeros(b))
    got = mnrl(q, p, torch.cat(negs) if negs else None, symmetric=symmetric)
    assert float(got) == pytest.approx(float(want), abs=1e-12)


def test_cosent_equals_sentence_transformers_with_ties(st_model):
    a, b = vectors(10, 16, seed=3), vectors(10, 16, seed=4)
    scores = torch.tensor([0.0, 1.0, 1.0, 2.5, 0.0, 4.0, 3.0, 1.0, 5.0, 2.5], dtype=torch.float64)
    want = losses.CoSENTLoss(st_model).compute_loss_from_embeddings([a, b], scores)
    assert float(cosent(a, b, scores)) == pytest.approx(float(want), abs=1e-12)
    assert float(cosent(a, b, torch.ones(10))) == pytest.approx(0.0)  # all gold scores equal: nothing to rank


def test_matryoshka_is_the_weighted_sum_over_truncations():
    q, p = vectors(5, 32, seed=5), vectors(5, 32, seed=6)
    dims, weights = (32, 16, 8), (1.0, 0.5, 2.0)
    want = sum(w * mnrl(q[:, :d], p[:, :d]) for d, w in zip(dims, weights))
    assert float(matryoshka(lambda d: mnrl(q[:, :d], p[:, :d]), dims, weights)) == pytest.approx(float(want))


def st_features(model: SentenceTransformer, texts: list[str]) -> dict:
    return model.tokenize(texts)


@pytest.mark.parametrize("kind", ["mnrl", "mnrl-negatives", "cosent", "matryoshka", "matryoshka-weighted"])
def test_task_loss_equals_sentence_transformers_end_to_end(st_model, minilm_path, kind):
    """The embed task's loss on a real batch (our encoder, the same MiniLM weights) = the sentence-transformers loss
    class run by its own model on the same texts (<= 1e-5)."""
    from encoderforge.model import checkpoint
    from encoderforge.tasks.embed import EmbedModel, EmbedTask
    from encoderforge.tokenization import load_tokenizer

    qs = ["gpl version two or later", "permission is hereby granted free of charge", "apache license 2.0", "bsd three clause"]
    ds = ["GNU General Public License v2", "MIT License text", "Apache License Version 2.0", "BSD 3-Clause License"]
    ns = ["Mozilla Public License", "ISC License", "Eclipse Public License", "Unlicense"]
    graded = kind == "cosent"
    rows = [
        ((q, d), (float(i) if graded else ([n] if kind == "mnrl-negatives" else [])))
        for i, (q, d, n) in enumerate(zip(qs, ds, ns))
    ]
    dims = (192, 96) if kind.startswith("matryoshka") else ()
    weights = (0.5, 3.0) if kind == "matryoshka-weighted" else ()  # one per dims entry; the full width weighs 1
    task = EmbedTask(load_tokenizer(minilm_path), rows, rows, max_length=64, batch_rows=4, dims=dims, dim_weights=weights)
    model = EmbedModel(checkpoint.load(minilm_path).encoder).eval()
    batch = task._batch(task.train)
    with torch.no_grad():
        ours = task.loss(model, batch)
    got = float(ours.total) / ours.count
    st_model.eval()
    cols = [qs, ds] + ([ns] if kind == "mnrl-negatives" else [])
    feats = [st_features(st_model, c) for c in cols]
    if kind == "cosent":
        ref, labels = losses.CoSENTLoss(st_model), torch.arange(4, dtype=torch.float32)
    elif kind.startswith("matryoshka"):
        ref, labels = (
            losses.MatryoshkaLoss(
                st_model, losses.MultipleNegativesRankingLoss(st_model), [384, 192, 96], [1.0, *(weights or (1.0, 1.0))]
            ),
            torch.zeros(4),
        )
    else:
        ref, labels = losses.MultipleNegativesRankingLoss(st_model), torch.zeros(4)
    with torch.no_grad():
        want = float(ref(feats, labels))
    assert got == pytest.approx(want, abs=1e-5)


def test_embed_task_refuses_weights_that_do_not_pair_one_to_one_with_widths(minilm_path):
    """The Python API checks what the config layer checks: duplicate widths would silently keep the last weight."""
    from encoderforge.tasks.embed import EmbedTask
    from encoderforge.tokenization import load_tokenizer

    rows = [(("a query", "its document"), []), (("another query", "another document"), [])]
    tok = load_tokenizer(minilm_path)
    for dims, weights in [((96, 96), (1.0, 3.0)), ((192, 96), (1.0,))]:
        with pytest.raises(EncoderforgeError, match=r"^embed.dim_weights: .* give distinct widths and one weight per width"):
            EmbedTask(tok, rows, rows, max_length=32, batch_rows=2, dims=dims, dim_weights=weights)
