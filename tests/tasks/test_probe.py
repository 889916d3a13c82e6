"""The linear probe (tasks/probe.py): LP-FT's head is exactly a logistic regression fitted on the same features,
computed independently here (the inference Engine's mean pooling, or its hidden states at each word's first piece for
NER; scikit-learn's LogisticRegression); every classify / multilabel / NER fine-tune reports the probe's scores;
head_init=probe (auto for those tasks) trains from that head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, from_records
from encoderforge.inference.engine import Engine
from encoderforge.model import checkpoint
from encoderforge.recipes.finetune import finetune, linear_probe, rows
from encoderforge.tasks import probe as probe_mod
from encoderforge.tasks.ner import encode_words
from encoderforge.tasks.probe import NER_GRID, NER_MAX_ITER, probe_run
from encoderforge.tasks.registry import TASKS
from encoderforge.tokenization import load_tokenizer

sklearn = pytest.importorskip("sklearn")


def built(task: str, tiny_model: Path, train, dev, ft_config, tmp_path: Path, values: dict, labels: list | None = None):
    """The model and task job exactly as the recipe builds them before training."""
    cfg = ft_config(task, tiny_model, tmp_path / "run", values)
    spec = TASKS[task]
    labels = labels or sorted(set(train.label_set()) | set(dev.label_set()))
    loaded = checkpoint.load(tiny_model)
    net = spec.build_model(loaded.encoder, labels, cfg)
    job = spec.build_task(load_tokenizer(tiny_model), labels, rows(train), rows(dev), cfg)
    return cfg, net, job, labels


def features(tiny_model: Path, texts: list[str], max_length: int) -> np.ndarray:
    eng = Engine(checkpoint.load(tiny_model).encoder, load_tokenizer(tiny_model), max_length=max_length, pack=False)
    return eng.embed(texts, pooling="mean", normalize=False).astype(np.float64)


def word_features(tiny_model: Path, sentences: list[list[str]], max_length: int) -> tuple[np.ndarray, list[list[int]]]:
    """The Engine's last hidden states at each word's first piece (words cut by truncation left out), and the
    first-piece positions per sentence."""
    enc = encode_words(load_tokenizer(tiny_model), sentences, max_length)
    eng = Engine(checkpoint.load(tiny_model).encoder, load_tokenizer(tiny_model), max_length=max_length, pack=False)
    per: list[np.ndarray] = [np.zeros(0)] * len(sentences)
    for b in eng.forward_batches(enc.ids):
        for row, i in enumerate(b.index):
            per[i] = b.hidden[row, [p for p in enc.first[i] if p >= 0]].numpy()
    return np.concatenate(per).astype(np.float64), enc.first


def ner_splits(wnut_rows, *spans: tuple[int, int]):
    """WNUT tweets [a, b) per split. A dev set that overlaps train gives the random tiny encoder's probe entities it can
    find (F1 > 0, varying with C); on unseen tweets it finds none."""
    return [from_records(wnut_rows[a:b], Schema(label_type="tags"), name=f"wnut{a}-{b}") for a, b in spans]


def test_lpft_head_equals_a_logistic_fit_on_the_same_features(tiny_model, bbc_rows, ft_config, tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression

    recs = [(text, topic) for topic, text in bbc_rows]
    train, dev = from_records(recs[:70], Schema(), name="train"), from_records(recs[70:], Schema(), name="dev")
    cfg, net, job, labels = built("classify", tiny_model, train, dev, ft_config, tmp_path,
                                  {"finetune.head_init": "probe", "finetune.max_length": 64})  # fmt: skip
    report = linear_probe(cfg, net, job, dev, None)
    assert report is not None and report["C"] in (0.1, 1.0, 10.0, 100.0)
    x = features(tiny_model, [t for t, _ in recs[:70]], 64)
    y = np.array([labels.index(lab) for _, lab in recs[:70]])
    lr = LogisticRegression(C=report["C"], max_iter=5000, tol=1e-6, random_state=0).fit(x, y)
    w = net.head.out.weight.detach().numpy()
    b = net.head.out.bias.detach().numpy()
    np.testing.assert_allclose(w, lr.coef_, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(b, lr.intercept_, rtol=1e-3, atol=1e-3)
    # the probe's reported dev accuracy is the fitted regression's own
    xd = features(tiny_model, [t for t, _ in recs[70:]], 64)
    yd = np.array([labels.index(lab) for _, lab in recs[70:]])
    assert report["dev"]["accuracy"] == pytest.approx(float((lr.predict(xd) == yd).mean()))
    # finetune.probe_c fixes C (dev then only scores it): the head is the regression at that C
    other = 0.1 if report["C"] != 0.1 else 10.0
    cfg, net, job, labels = built("classify", tiny_model, train, dev, ft_config, tmp_path / "fixed",
                                  {"finetune.head_init": "probe", "finetune.max_length": 64, "finetune.probe_c": other})  # fmt: skip
    fixed = linear_probe(cfg, net, job, dev, None)
    assert fixed is not None and fixed["C"] == other
    lr = LogisticRegression(C=other, max_iter=5000, tol=1e-6, random_state=0).fit(x, y)
    np.testing.assert_allclose(net.head.out.weight.detach().numpy(), lr.coef_, rtol=1e-3, atol=1e-3)
    with pytest.raises(EncoderforgeError, match=r"^finetune.probe_c must be > 0 \(or 0 = chosen on dev\), got -1"):
        built("classify", tiny_model, train, dev, ft_config, tmp_path / "bad", {"finetune.probe_c": -1})


def test_multilabel_probe_is_one_regression_per_label(tiny_model, license_rule_rows, ft_config, tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression

    schema = Schema(label_type="multilabel")
    train = from_records(license_rule_rows[:45], schema, name="train")
    dev = from_records(license_rule_rows[45:], schema, name="dev")
    cfg, net, job, labels = built("multilabel", tiny_model, train, dev, ft_config, tmp_path,
                                  {"finetune.head_init": "probe", "finetune.max_length": 64})  # fmt: skip
    report = linear_probe(cfg, net, job, dev, None)
    x = features(tiny_model, [t for t, _ in license_rule_rows[:45]], 64)
    for j, lab in enumerate(labels):
        col = np.array([lab in labs for _, labs in license_rule_rows[:45]], dtype=int)
        if col.min() == col.max():
            continue
        lr = LogisticRegression(C=report["C"], max_iter=5000, tol=1e-6, random_state=0).fit(x, col)
        # the same L2-regularised optimum, up to the solver's tolerance (features agree to 1e-7)
        np.testing.assert_allclose(net.head.out.weight.detach().numpy()[j], lr.coef_[0], rtol=1e-2, atol=5e-3)


def test_ner_lpft_head_equals_a_logistic_fit_on_first_piece_features(tiny_model, wnut_rows, ft_config, tmp_path) -> None:
    from seqeval.metrics import f1_score
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    train, dev = ner_splits(wnut_rows, (0, 90), (60, 120))
    labels = TASKS["ner"].labels_from(train, dev)  # every type as a B-/I- pair: some tags never occur in train
    cfg, net, job, _ = built("ner", tiny_model, train, dev, ft_config, tmp_path,
                             {"finetune.max_length": 64}, labels)  # fmt: skip
    report = linear_probe(cfg, net, job, dev, None)  # head_init auto = probe for NER: the head keeps the fit
    assert report is not None and report["C"] in (0.1, 1.0, 10.0, 100.0)
    x, _ = word_features(tiny_model, [w for w, _ in wnut_rows[:90]], 64)
    y = np.array([labels.index(t) for _, tags in wnut_rows[:90] for t in tags])
    assert len(x) == len(y)  # no tweet is cut at 64 pieces
    with threadpool_limits(1, user_api="blas"):  # as the probe under one torch thread (and much faster here)
        lr = LogisticRegression(C=report["C"], max_iter=NER_MAX_ITER, tol=1e-6, random_state=0).fit(x, y)
    w = net.head.out.weight.detach().numpy()
    b = net.head.out.bias.detach().numpy()
    # the same L2-regularised optimum, up to the solver's tolerance (lbfgs stops at tol=1e-6 on features that agree
    # to ~1e-6, over ~1000 steps: weights of size ~1 agree to ~5e-3)
    np.testing.assert_allclose(w[lr.classes_], lr.coef_, rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(b[lr.classes_], lr.intercept_, rtol=1e-2, atol=2e-2)
    absent = sorted(set(range(len(labels))) - set(lr.classes_))
    assert absent and (b[absent] < -1e3).all() and (w[absent] == 0).all()  # tags absent from train: never predicted
    # the probe's dev F1 is seqeval's on the regression's own tags at each word's first piece
    xd, first = word_features(tiny_model, [w for w, _ in wnut_rows[60:]], 64)
    flat = iter(lr.predict(xd))  # kept words in order
    pred = [[labels[next(flat)] if p >= 0 else "O" for p in pos] for pos in first]
    gold = [tags for _, tags in wnut_rows[60:]]
    assert report["dev"]["f1"] > 0.2 and report["dev"]["f1"] == pytest.approx(f1_score(gold, pred, zero_division=0))


def test_ner_probe_is_scored_by_the_task_and_chosen_by_entity_f1(tiny_model, wnut_rows, ft_config, tmp_path, monkeypatch) -> None:
    train, dev, test = ner_splits(wnut_rows, (0, 70), (40, 95), (60, 120))
    labels = TASKS["ner"].labels_from(train, dev, test)
    cfg, net, job, _ = built("ner", tiny_model, train, dev, ft_config, tmp_path, {"finetune.max_length": 64}, labels)
    probe, report = probe_run("ner", net, job, rows(dev), rows(test), seed=0)
    assert set(report) == {"C", "fit_s", "dev", "test"} and report["C"] == probe.c
    # dev and test come from NERTask.evaluate with the probe as the head (seqeval, per-type report)
    assert report["dev"] == job.evaluate(net, rows(dev)) and report["test"] == job.evaluate(net, rows(test))
    assert report["test"]["n"] == 60 and "per_type" in report["test"]
    assert probe.dev_score == pytest.approx(report["dev"]["f1"])  # the probe's own dev F1 is the task's
    assert torch.equal(net.head.out.weight, torch.as_tensor(probe.weight, dtype=torch.float32))
    # C is the grid's best by entity-level dev F1, as the task's evaluate scores each C's regression in the model
    f1s = []
    for c in NER_GRID:
        monkeypatch.setattr(probe_mod, "NER_GRID", (c,))
        f1s.append(probe_run("ner", net, job, rows(dev), None, seed=0)[1]["dev"]["f1"])
    assert len(set(f1s)) > 1 and probe.c == NER_GRID[int(np.argmax(f1s))] and probe.dev_score == pytest.approx(max(f1s))


def test_a_ner_run_starts_from_the_probe_and_reports_it(tiny_model, wnut_rows, ft_config, tmp_path) -> None:
    train, dev, test = ner_splits(wnut_rows, (0, 60), (40, 90), (30, 120))
    # head_init left at auto; at lr 1e-9 the weights barely move, so the saved head is the one training started from
    values = {"finetune.epochs": 1, "train.batch_rows": 16, "finetune.max_length": 64, "train.progress": False,
              "train.lr": 1e-9}  # fmt: skip
    run = finetune(ft_config("ner", tiny_model, tmp_path / "auto", values), train=train, dev=dev, test=test)
    saved = json.loads((run.run_dir / "metrics.json").read_text())
    assert set(saved["probe"]) >= {"C", "dev", "test", "fit_s"}
    labels = json.loads((run.run_dir / "task.json").read_text())["labels"]
    _, net, job, _ = built("ner", tiny_model, train, dev, ft_config, tmp_path, values, labels)
    probe, _ = probe_run("ner", net, job, rows(dev), None, seed=0)
    head = checkpoint.load(run.run_dir / "model").extra
    np.testing.assert_allclose(head["head.out.weight"].numpy(), probe.weight, atol=1e-5)
    assert (
        saved["probe"]["dev"]["f1"] > 0
        and saved["dev"]["f1"] == saved["probe"]["dev"]["f1"]
        and saved["test"]["f1"] == saved["probe"]["test"]["f1"]
    )


def test_a_random_head_run_reports_the_probe_and_keeps_its_random_start(tiny_model, bbc_rows, ft_config, tmp_path) -> None:
    recs = [(text, topic) for topic, text in bbc_rows]
    train, dev, test = (from_records(recs[a:b], Schema(), name=n) for a, b, n in ((0, 60, "tr"), (60, 80, "dv"), (80, 100, "te")))
    values = {"finetune.epochs": 1, "train.batch_rows": 16, "finetune.max_length": 64, "train.progress": False,
              "finetune.head_init": "random"}  # fmt: skip
    on = finetune(ft_config("classify", tiny_model, tmp_path / "a", values), train=train, dev=dev, test=test)
    off = finetune(
        ft_config("classify", tiny_model, tmp_path / "b", {**values, "finetune.probe": False}), train=train, dev=dev, test=test
    )
    assert "probe" not in off.metrics and set(on.metrics["probe"]) >= {"C", "dev", "test", "fit_s"}
    assert on.metrics["test"] == off.metrics["test"]  # fitting the probe does not change the random-head run
    lpft = finetune(
        ft_config("classify", tiny_model, tmp_path / "c", {**values, "finetune.head_init": "probe"}),
        train=train,
        dev=dev,
        test=test,
    )
    same = ("C", "dev", "test")  # fit_s is a timing
    assert {k: lpft.metrics["probe"][k] for k in same} == {k: on.metrics["probe"][k] for k in same}


def test_head_init_probe_on_a_task_without_a_probe_is_an_error(tiny_model, ft_config, tmp_path) -> None:
    schema = Schema(text_fields=("a", "b"), label_type="float")
    recs = [(("a text", "another"), 0.5), (("more", "words"), 1.0)] * 5
    cfg = ft_config("regress", tiny_model, tmp_path / "r", {"finetune.head_init": "probe"})
    with pytest.raises(EncoderforgeError, match="head_init=probe applies to classify, multilabel and ner"):
        finetune(cfg, train=from_records(recs, schema), dev=from_records(recs, schema))
