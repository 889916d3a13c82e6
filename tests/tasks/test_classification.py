"""Single-label classification: metrics match sklearn, the loop's summed metrics match the full evaluation,
chunk pooling is what it says, fine-tuning learns on real BBC articles and writes a complete run directory, and
prediction through the inference Engine gives the training path's numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, from_records
from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.recipes.finetune import BestKeeper, finetune
from encoderforge.recipes.predict import Predictor
from encoderforge.tasks.classification import (
    ClassificationTask,
    SequenceModel,
    class_weights,
    classification_metrics,
)
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.distributed import setup
from encoderforge.training.loop import evaluate

LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def split(rows):
    recs = [(text, topic) for topic, text in rows]
    return (
        from_records(recs[:60], Schema(), name="bbc-train"),
        from_records(recs[60:80], Schema(), name="bbc-dev"),
        from_records(recs[80:], Schema(), name="bbc-test"),
    )


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 4, 200)  # class 4 never predicted
    m = classification_metrics(y, p, LABELS)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["per_label_f1"]["tech"] == 0.0


def test_balanced_class_weights():
    w = class_weights([0, 0, 0, 1], 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 1.0])


def test_loop_metrics_equal_full_evaluation_and_chunk_pooling(minilm_path, bbc_rows):
    tok = load_tokenizer(minilm_path)
    rows = [((text,), topic) for topic, text in bbc_rows[:30]]
    task = ClassificationTask(tok, LABELS, rows, rows, max_length=48, batch_rows=8, max_chunks=3, stride=8)
    assert task.dev_enc.num_docs == 30 and len(task.dev_enc.ids) > 60  # long articles became several windows
    torch.manual_seed(0)
    model = SequenceModel(Encoder(preset("bert-tiny", vocab_size=30522)), len(LABELS), chunk_pooling="max").eval()
    summed = evaluate(model, task, setup("cpu"))  # what the training loop logs, summed batch by batch
    full = task.evaluate(model, rows)
    assert summed["accuracy"] == pytest.approx(full["accuracy"]) and summed["macro_f1"] == pytest.approx(full["macro_f1"])
    # max pooling: a document's logits are the element-wise max over its windows, each run on its own
    enc = task.dev_enc
    doc0 = [w for w, d in enumerate(enc.doc) if d == 0]
    with torch.no_grad():
        alone = [model.head(model.encoder(torch.tensor([enc.ids[w]])), torch.ones(1, len(enc.ids[w]))) for w in doc0]
    expect = torch.cat(alone).max(0).values
    torch.testing.assert_close(torch.from_numpy(task.predict_logits(model, enc)[0]), expect, atol=1e-5, rtol=1e-4)


def test_cls_pooling_runs_the_last_layer_on_cls_only(minilm_path, bbc_rows):
    """With [CLS] pooling the last layer computes the S [CLS] rows only: the same logits as the full forward."""
    from encoderforge.model.padding import layout_from_lengths, pad
    from encoderforge.tasks.sequences import make_batch, windows_by_doc

    rows = [((text,), topic) for topic, text in bbc_rows[:6]]
    task = ClassificationTask(
        load_tokenizer(minilm_path), LABELS, rows, rows, max_length=40, batch_rows=8, max_chunks=2, stride=8
    )
    enc = task.train_enc
    batch = make_batch(enc, windows_by_doc(enc), list(range(6)), task.train_y)
    torch.manual_seed(0)
    model = SequenceModel(Encoder(preset("bert-tiny", vocab_size=30522)), len(LABELS), pooling="cls").eval()
    seen = []
    model.encoder.layers[-1].mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    with torch.no_grad():
        logits = model(batch)
        layout = layout_from_lengths(batch.lengths)
        full = model.encoder.forward_unpadded(batch.input_ids, layout)
        per_window = model.head(pad(full, layout), torch.ones(len(batch.lengths), layout.seqlen))
    assert seen[0] == len(batch.lengths) < batch.input_ids.numel() and logits.shape == (6, len(LABELS))
    expect = torch.stack([per_window[batch.doc == d].mean(0) for d in range(6)])  # chunk pooling: mean
    torch.testing.assert_close(logits, expect, atol=1e-5, rtol=1e-4)


def test_finetune_learns_and_run_dir_is_complete(tiny_model, bbc_rows, tmp_path, ft_config):
    train, dev, test = split(bbc_rows)
    cfg = ft_config(
        "classify",
        tiny_model,
        tmp_path / "run",
        {
            "finetune.max_length": 64,
            "finetune.epochs": 8,
            "train.batch_rows": 8,
            "train.lr": 2e-3,
            "finetune.warmup_ratio": 0.1,
            "train.seed": 0,
            "finetune.evals_per_epoch": 1,
        },
    )
    r = finetune(cfg, train=train, dev=dev, test=test)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m == json.loads(json.dumps(r.metrics))
    assert m["dev"]["accuracy"] >= 0.6 and m["test"]["accuracy"] >= 0.4, m  # chance is 0.2
    assert m["train_examples"] == 60 and m["test_examples"] == 20 and m["peak_rss_mb"] > 50
    assert 0 < m["best_step"] <= 8 * 8 and m["s_per_epoch"] > 0
    curve = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(c["eval_accuracy"] for c in curve if "eval_accuracy" in c) == pytest.approx(m["dev"]["accuracy"])
    meta = json.loads((tmp_path / "run" / "task.json").read_text())
    assert meta["kind"] == "classify" and meta["labels"] == LABELS and meta["max_length"] == 64
    loaded = checkpoint.load(tmp_path / "run" / "model")
    assert {"head.out.weight", "head.out.bias"} == set(loaded.extra)
    assert not (tmp_path / "run" / "checkpoints").exists()
    # prediction through the Engine (token-budget batches, unpadded forward) = the training path's logits
    pred = Predictor.load(tmp_path / "run").predict([ex.texts[0] for ex in test.examples])
    acc = np.mean([p["label"] == ex.label for p, ex in zip(pred, test.examples)])
    assert acc == pytest.approx(m["test"]["accuracy"])
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-3 for p in pred)
    with pytest.raises(EncoderforgeError, match="already holds a finished run"):
        finetune(cfg, train=train, dev=dev, test=test)


def test_freeze_reinit_and_unknown_dev_label(tiny_model, bbc_rows, tmp_path, ft_config):
    train, dev, _ = split(bbc_rows)
    values = {
        "finetune.max_length": 32,
        "finetune.epochs": 1,
        "train.batch_rows": 16,
        "finetune.freeze_layers": 1,
        "finetune.reinit_layers": 1,
        "train.lr": 1e-3,
    }
    finetune(ft_config("classify", tiny_model, tmp_path / "run", values), train=train, dev=dev)
    before, after = (
        checkpoint.load(tiny_model).encoder.state_dict(),
        checkpoint.load(tmp_path / "run" / "model").encoder.state_dict(),
    )
    assert torch.equal(before["embeddings.tok.weight"], after["embeddings.tok.weight"])  # frozen
    assert torch.equal(before["layers.0.mlp.fc1.weight"], after["layers.0.mlp.fc1.weight"])  # frozen
    assert not torch.equal(before["layers.1.mlp.fc1.weight"], after["layers.1.mlp.fc1.weight"])  # trained
    bad = from_records([("some text", "weather")], Schema(), name="bad-dev")
    with pytest.raises(EncoderforgeError, match="bad-dev:1: label 'weather' does not occur in the training data"):
        finetune(ft_config("classify", tiny_model, tmp_path / "bad", values), train=train, dev=bad)


def test_best_keeper_restores_best_and_stops_after_patience():
    model = torch.nn.Linear(2, 1)
    keeper = BestKeeper(model, "accuracy", patience=2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert keeper(10, {"accuracy": 0.5}) is False
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert keeper(20, {"accuracy": 0.4}) is False
    assert keeper(30, {"accuracy": 0.45}) is True and keeper.stopped
    keeper.restore()
    assert model.weight.tolist() == [[1.0, 1.0]] and keeper.best_step == 10


def test_pooler_head_starts_as_berts_pooler_and_trains_its_own_copy(minilm_path, bbc_rows):
    """pooling "pooler" = `BertForSequenceClassification`'s head: [CLS] -> the checkpoint's dense + tanh (its
    `pooler_output`, checked against transformers on the real MiniLM weights) -> dropout -> linear. The head trains
    its own copy of the dense layer; the encoder's pooler stays frozen as before."""
    import transformers

    from encoderforge.tasks.sequences import make_batch, windows_by_doc

    rows = [((text,), topic) for topic, text in bbc_rows[:4]]
    tok = load_tokenizer(minilm_path)
    task = ClassificationTask(tok, LABELS, rows, rows, max_length=48, batch_rows=8, max_chunks=1, stride=8)
    enc = task.train_enc
    batch = make_batch(enc, windows_by_doc(enc), list(range(4)), task.train_y)
    model = SequenceModel(checkpoint.load(minilm_path).encoder, len(LABELS), pooling="pooler").eval()
    out, model.head.out = model.head.out, torch.nn.Identity()
    with torch.no_grad():
        ours = model(batch)  # (4, C): tanh(dense([CLS])) with the head's last linear bypassed
    model.head.out = out
    hf = transformers.BertModel.from_pretrained(str(minilm_path)).eval()
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in enc.ids], batch_first=True)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(x) for x in enc.ids])[:, None]).long()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).pooler_output
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    model.train()
    torch.nn.functional.cross_entropy(model(batch), batch.targets).backward()
    assert model.head.dense.weight.grad is not None and model.head.dense.weight.grad.abs().sum() > 0
    assert model.encoder.pooler.dense.weight.grad is None  # the encoder's own pooler is not trained


def test_a_pooler_head_run_saves_its_dense_layer_and_predicts_as_it_evaluated(tiny_model, bbc_rows, tmp_path, ft_config):
    train, dev, test = split(bbc_rows)
    values = {
        "finetune.max_length": 32,
        "finetune.epochs": 2,
        "train.batch_rows": 8,
        "train.lr": 2e-3,
        "finetune.pooling": "pooler",
    }
    r = finetune(ft_config("classify", tiny_model, tmp_path / "run", values), train=train, dev=dev, test=test)
    assert json.loads((tmp_path / "run" / "task.json").read_text())["pooling"] == "pooler"
    assert {"head.dense.weight", "head.dense.bias", "head.out.weight", "head.out.bias"} == set(
        checkpoint.load(tmp_path / "run" / "model").extra
    )
    pred = Predictor.load(tmp_path / "run").predict([ex.texts[0] for ex in test.examples])
    assert np.mean([p["label"] == ex.label for p, ex in zip(pred, test.examples)]) == pytest.approx(r.metrics["test"]["accuracy"])
    with pytest.raises(EncoderforgeError, match=r"^finetune.pooling pooler: an embedding run pools by mean or cls"):
        finetune(
            ft_config("embed", tiny_model, tmp_path / "emb", {"finetune.pooling": "pooler", "finetune.max_length": 32}),
            train=train,
            dev=dev,
        )
