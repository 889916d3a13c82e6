"""`finetune colbert`: MaxSim of the model's token vectors equals a direct computation on real texts (each text run
alone, einsum + max + sum), the loss equals a hand-written cross-entropy over MaxSim scores, an end-to-end run on real
license pairs whose saved model predicts per-token vectors, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.model import checkpoint
from encoderforge.tasks.colbert import ColBERTModel, ColBERTTask, maxsim
from encoderforge.tasks.sequences import encode_texts
from encoderforge.tokenization import load_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_maxsim_of_model_vectors_equals_direct_computation(minilm_path, real_texts):
    torch.manual_seed(0)
    model = ColBERTModel(checkpoint.load(minilm_path).encoder).eval()
    tok = load_tokenizer(minilm_path)
    texts = [t for t in real_texts if t][:12]
    ids = encode_texts(tok, [(t,) for t in texts], 96).ids
    with torch.no_grad():
        flat = torch.tensor([x for s in ids for x in s])
        out = model(flat, torch.tensor([len(s) for s in ids]))  # every text packed in one forward
        got = maxsim(out.hidden[:4], out.mask[:4], out.hidden[4:], out.mask[4:])  # (4, 8)
        alone = []  # each text through the encoder on its own, projected and normalised by hand
        for s in ids:
            h = model.encoder.forward_packed(torch.tensor(s), torch.tensor([len(s)])).hidden  # (L, C)
            alone.append(torch.nn.functional.normalize(h @ model.head.proj.weight.T + model.head.proj.bias, dim=-1))
    assert out.hidden.shape == (12, max(len(s) for s in ids), 128)
    for i, v in enumerate(alone):
        torch.testing.assert_close(out.hidden[i, : len(ids[i])], v, atol=2e-5, rtol=1e-4)
        assert out.mask[i].sum() == len(ids[i]) and not out.hidden[i, len(ids[i]) :].any()
    want = torch.tensor([[torch.einsum("qc,tc->qt", q, d).max(dim=1).values.sum().item() for d in alone[4:]] for q in alone[:4]])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_loss_equals_cross_entropy_over_maxsim_by_hand(tiny_model):
    tok = load_tokenizer(tiny_model)
    rows = [
        (("permission is hereby granted", "the MIT license text"), ["the GPL text"]),
        (("licensed under the apache license", "Apache License 2.0"), ["BSD 3-clause"]),
        (("redistribution and use in source", "BSD new"), ["Mozilla public license"]),
    ]
    torch.manual_seed(0)
    model = ColBERTModel(checkpoint.load(tiny_model).encoder, dim=16).eval()
    task = ColBERTTask(tok, rows, rows, max_length=32, batch_rows=3)
    batch = next(task.train_batches(0))[0]
    with torch.no_grad():
        got = task.loss(model, batch)
        texts = task.pairs.texts  # every text once; the batch holds each exactly once
        ids = encode_texts(tok, [(t,) for t in texts], 32).ids
        vec = {}
        for t, s in zip(texts, ids):  # each text on its own
            h = model.encoder.forward_packed(torch.tensor(s), torch.tensor([len(s)])).hidden
            vec[t] = torch.nn.functional.normalize(model.head.proj(h), dim=-1)
    # the batch's texts, recovered from its packed ids: text s of the batch is batch_text[s]
    by_ids = {tuple(x): t for t, x in zip(texts, ids)}
    cuts = torch.cumsum(batch.lengths, 0).tolist()
    batch_text = [by_ids[tuple(batch.input_ids[a - n : a].tolist())] for a, n in zip(cuts, batch.lengths.tolist())]
    queries = [batch_text[i] for i in batch.query]
    cands = [batch_text[i] for i in torch.cat([batch.positive, batch.negatives])]  # positives, then negatives
    assert sorted(cands) == sorted(t for r in rows for t in (r[0][1], r[1][0]))
    total = 0.0
    for i, q in enumerate(queries):
        s = [float((vec[q] @ vec[d].T).max(dim=1).values.sum()) for d in cands]
        total += -s[i] + float(np.log(np.sum(np.exp(s))))
    assert got.count == 3
    assert float(got.total) == pytest.approx(total, rel=1e-4)


def test_finetune_colbert_end_to_end_on_real_license_pairs(tiny_model, license_pairs, tmp_path, ft_config):
    from encoderforge.recipes.finetune import finetune
    from encoderforge.recipes.predict import Predictor

    rows = license_pairs[:42]
    train = write_jsonl(tmp_path / "train.jsonl", [r for i, r in enumerate(rows) if i % 3])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[::3])
    cfg = ft_config(
        "colbert",
        tiny_model,
        tmp_path / "run",
        {"data.train": str(train), "data.dev": str(dev), "data.test": str(dev), "finetune.max_length": 64,
         "finetune.epochs": 1, "train.batch_rows": 8, "train.lr": 1e-4},
    )  # fmt: skip
    m = finetune(cfg).metrics
    assert m["task"] == "colbert" and m["primary"] == "ndcg@10"
    assert {"ndcg@10", "mrr@10", "recall@1", "recall@10", "loss"} <= set(m["test"])
    assert 0 < m["test"]["ndcg@10"] <= 1 and np.isfinite(m["test"]["loss"])
    curve = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_ndcg@10" in c for c in curve)
    meta = json.loads((tmp_path / "run" / "task.json").read_text())
    assert meta["kind"] == "colbert" and meta["dim"] == 128
    # prediction: one unit 128-d vector per wordpiece, the vectors the trained model makes
    texts = [rows[0]["query"], "MIT License"]
    pred = Predictor.load(tmp_path / "run").predict(texts)
    assert pred[1]["tokens"] == ["[CLS]", "mit", "license", "[SEP]"]
    v = np.array(pred[1]["vectors"])
    assert v.shape == (4, 128) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)


def test_colbert_rejects_graded_pairs(tiny_model, tmp_path, ft_config):
    from encoderforge.recipes.finetune import finetune

    rows = [{"query": f"q{i}", "positive": f"d{i}", "negatives": ["n"] if i < 3 else 0.5} for i in range(6)]
    f = write_jsonl(tmp_path / "g.jsonl", rows)
    cfg = ft_config("colbert", tiny_model, tmp_path / "run", {"data.train": str(f), "data.dev": str(f)})
    with pytest.raises(EncoderforgeError, match=r"^\S*g\.jsonl:4: 'negatives' is a score") as e:
        finetune(cfg)
    assert "\n" not in str(e.value)
