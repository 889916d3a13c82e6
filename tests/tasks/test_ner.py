"""NER: first-word-piece alignment, entity counts = seqeval, a run on real WNUT-16 tweets, prediction of tags and
entities through the Engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, from_records
from encoderforge.model import checkpoint
from encoderforge.recipes.finetune import finetune
from encoderforge.recipes.predict import Predictor
from encoderforge.tasks.ner import (
    NERTask,
    TokenModel,
    decode,
    encode_words,
    entity_counts,
)
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.distributed import setup
from encoderforge.training.loop import evaluate


def test_first_word_piece_alignment(minilm_path):
    tok = load_tokenizer(minilm_path)
    enc = encode_words(tok, [["Unbelievably", "good", "@user"]], 32)
    ids, first = enc.ids[0], enc.first[0]
    assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")
    assert first[0] == 1 and first[1] > 2  # "unbelievably" is several pieces: "good" starts later
    assert tok.id_to_token(ids[first[1]]) == "good" and tok.id_to_token(ids[first[2]]) == "@"
    cut = encode_words(tok, [["word"] * 40], 16)
    assert cut.truncated == 1 and cut.first[0][13] == 14 and cut.first[0][14] == -1  # [CLS] + 14 words + [SEP]
    logits = np.zeros((16, 3))
    logits[:, 1] = 1.0
    assert decode(logits, cut.first[0], ["O", "B-x", "I-x"])[-1] == "O"  # words cut off are "O"


def test_entity_counts_match_seqeval(wnut_rows):
    gold = [tags for _, tags in wnut_rows[:60]]
    pred = [tags[:-1] + (["B-person"] if i % 3 == 0 else tags[-1:]) for i, tags in enumerate(gold)]
    pred[5] = ["O"] * len(pred[5])
    tp, n_pred, n_gold = entity_counts(gold, pred)
    assert n_gold > 20 and tp < n_gold
    assert tp / n_pred == pytest.approx(precision_score(gold, pred))
    assert tp / n_gold == pytest.approx(recall_score(gold, pred))


def test_finetune_on_wnut_and_predict(tiny_model, wnut_rows, tmp_path, ft_config):
    schema = Schema(label_type="tags")
    train = from_records(wnut_rows[:90], schema, name="wnut-train")
    dev = from_records(wnut_rows[90:], schema, name="wnut-dev")
    cfg = ft_config(
        "ner",
        tiny_model,
        tmp_path / "run",
        {"finetune.max_length": 64, "finetune.epochs": 3, "train.batch_rows": 16, "train.lr": 2e-3},
    )
    r = finetune(cfg, train=train, dev=dev)
    m = r.metrics
    assert m["primary"] == "f1" and "test" not in m  # no test split given: no test score
    assert m["dev"]["n"] == 30 and 0.0 <= m["dev"]["f1"] <= 1.0
    labels = json.loads((tmp_path / "run" / "task.json").read_text())["labels"]
    assert labels[0] == "O" and all(t[:2] in ("B-", "I-") for t in labels[1:])
    # the loop's summed entity counts and seqeval on whole sequences agree
    tok = load_tokenizer(tmp_path / "run" / "model")
    loaded = checkpoint.load(tmp_path / "run" / "model")
    model = TokenModel(loaded.encoder, len(labels))
    model.head.load_state_dict({k[5:]: v for k, v in loaded.extra.items()})
    rows = [(ex.texts, ex.label) for ex in dev.examples]
    task = NERTask(tok, labels, rows, rows, max_length=64)
    summed, full = evaluate(model, task, setup("cpu")), task.evaluate(model, rows)
    assert summed["f1"] == pytest.approx(full["f1"]) and full["f1"] == pytest.approx(m["dev"]["f1"])
    preds = Predictor.load(tmp_path / "run").predict([" ".join(ex.texts) for ex in dev.examples])
    assert [p["tokens"] for p in preds] == [ex.texts for ex in dev.examples]
    pred_tags = [p["tags"] for p in preds]
    gold = [ex.label for ex in dev.examples]
    assert f1_score(gold, pred_tags) == pytest.approx(m["dev"]["f1"])
    for p in preds:
        for e in p["entities"]:
            assert p["tags"][e["start"]] in (f"B-{e['type']}", f"I-{e['type']}")


def test_non_bio_tags_are_rejected(tiny_model, tmp_path, ft_config):
    schema = Schema(label_type="tags")
    bad = from_records([(["a", "b"], ["PER", "O"])] * 4, schema, name="bad")
    with pytest.raises(EncoderforgeError, match="tag 'PER' is not BIO"):
        finetune(ft_config("ner", tiny_model, tmp_path / "run", {"finetune.epochs": 1}), train=bad, dev=bad)
