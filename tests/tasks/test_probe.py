"""The linear probe (tasks/probe.py): LP-FT's head is exactly a logistic regression fitted on the same features,
computed independently here (the inference Engine's mean pooling, scikit-learn's LogisticRegression); every pooled
fine-tune reports the probe's scores; head_init=probe trains from that head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, from_records
from encoderforge.inference.engine import Engine
from encoderforge.model import checkpoint
from encoderforge.recipes.finetune import finetune, linear_probe, rows
from encoderforge.tasks.registry import TASKS
from encoderforge.tokenization import load_tokenizer

sklearn = pytest.importorskip("sklearn")


def built(task: str, tiny_model: Path, train, dev, ft_config, tmp_path: Path, values: dict):
    """The model and task job exactly as the recipe builds them before training."""
    cfg = ft_config(task, tiny_model, tmp_path / "run", values)
    spec = TASKS[task]
    labels = sorted(set(train.label_set()) | set(dev.label_set()))
    loaded = checkpoint.load(tiny_model)
    net = spec.build_model(loaded.encoder, labels, cfg)
    job = spec.build_task(load_tokenizer(tiny_model), labels, rows(train), rows(dev), cfg)
    return cfg, net, job, labels


def features(tiny_model: Path, texts: list[str], max_length: int) -> np.ndarray:
    eng = Engine(checkpoint.load(tiny_model).encoder, load_tokenizer(tiny_model), max_length=max_length, pack=False)
    return eng.embed(texts, pooling="mean", normalize=False).astype(np.float64)


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
    with pytest.raises(EncoderforgeError, match="head_init=probe applies to classify and multilabel"):
        finetune(cfg, train=from_records(recs, schema), dev=from_records(recs, schema))
