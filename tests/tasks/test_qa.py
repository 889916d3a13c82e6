"""Extractive QA end to end on data CONSTRUCTED here from real BBC articles (no SQuAD-style set ships offline):
cloze questions whose answer is a number in the article. Checks the machinery (windows with doc stride, offsets,
decoding, EM/F1, prediction through the Engine), not a benchmark."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, read_dataset, read_qa
from encoderforge.recipes.finetune import finetune
from encoderforge.recipes.predict import Predictor
from encoderforge.tasks.qa import QATask, best_span, em_f1, encode_qa
from encoderforge.tokenization import load_tokenizer


def cloze(bbc_rows, n):
    """Question = a sentence with one number replaced by 'what number'; answer = that number in the article."""
    out = []
    for _, text in bbc_rows:
        context = " ".join(text.split())[:700]
        for m in re.finditer(r"[^.]*?\b(\d[\d,.]*\d|\d)\b[^.]*\.", context):
            sentence, num = m.group(0).strip(), m.group(1)
            start = m.start(1)
            out.append(
                {
                    "question": sentence.replace(num, "what number", 1),
                    "context": context,
                    "answers": [{"text": num, "start": start}],
                }
            )
            break
        if len(out) == n:
            break
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_squad_normalisation():
    assert em_f1("The 2,000 votes", ["2,000 votes"]) == (1.0, 1.0)
    em, f1 = em_f1("about 2000 people", ["2000"])
    assert em == 0.0 and f1 == pytest.approx(0.5)


def test_windows_locate_the_answer_and_oracle_decoding_is_exact(minilm_path, bbc_rows, tmp_path):
    rows = [((r["question"], r["context"]), [(a["text"], a["start"]) for a in r["answers"]]) for r in cloze(bbc_rows, 12)]
    tok = load_tokenizer(minilm_path)
    w = encode_qa(tok, rows, max_length=64, stride=16)
    assert len(w.ids) > 2 * len(rows)  # 700-character contexts need several 64-token windows
    for i, (_, answers) in enumerate(rows):
        hits = [j for j in w.by_example[i] if w.start[j] > 0]
        assert hits, "some window holds the whole answer"
        for j in w.by_example[i]:
            if w.start[j]:
                text, start = answers[0]
                s, e = w.offsets[j][w.start[j]][0], w.offsets[j][w.end[j]][1]
                assert (s, e) == (start, start + len(text))
    # perfect logits on the gold tokens decode back to the exact answer text
    for i, ((_, context), answers) in enumerate(rows):
        wins = w.by_example[i]
        starts = [np.where(np.arange(len(w.ids[j])) == w.start[j], 10.0, 0.0) for j in wins]
        ends = [np.where(np.arange(len(w.ids[j])) == w.end[j], 10.0, 0.0) for j in wins]
        k, s, e = best_span(starts, ends, [w.in_context[j] for j in wins], 30)
        assert context[w.offsets[wins[k]][s][0] : w.offsets[wins[k]][e][1]] == answers[0][0]


def test_read_qa_checks_offsets(tmp_path):
    good = {"question": "q?", "context": "the answer is 42.", "answers": [{"text": "42", "start": 14}]}
    bad = {**good, "answers": [{"text": "42", "start": 3}]}
    assert read_qa(write_jsonl(tmp_path / "g.jsonl", [good]))[0].answers == [("42", 14)]
    with pytest.raises(EncoderforgeError, match=r"b.jsonl:2: answers\[0\] '42' is not the context's text at character 3"):
        read_qa(write_jsonl(tmp_path / "b.jsonl", [good, bad]))


def test_finetune_qa_end_to_end(tiny_model, bbc_rows, tmp_path, ft_config):
    data = cloze(bbc_rows, 40)
    train, dev = write_jsonl(tmp_path / "train.jsonl", data[:30]), write_jsonl(tmp_path / "dev.jsonl", data[30:])
    cfg = ft_config(
        "qa",
        tiny_model,
        tmp_path / "run",
        {
            "data.train": str(train),
            "data.dev": str(dev),
            "data.test": str(dev),
            "finetune.max_length": 96,
            "finetune.stride": 32,
            "finetune.epochs": 2,
            "train.batch_rows": 8,
            "train.lr": 2e-3,
        },
    )
    r = finetune(cfg)
    m = r.metrics
    assert m["primary"] == "f1" and m["test"]["n"] == 10 and m["test"]["windows"] > 10
    curve = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(c["eval_f1"] for c in curve if "eval_f1" in c) == pytest.approx(m["dev"]["f1"])  # loop = final eval
    ds = read_dataset(dev, Schema(label_type="span"))
    preds = Predictor.load(tmp_path / "run").predict([f"{ex.texts[0]}\t{ex.texts[1]}" for ex in ds.examples])
    for p, ex in zip(preds, ds.examples):
        assert p["answer"] == ex.texts[1][p["start"] : p["end"]] and p["answer"]
    f1 = np.mean([em_f1(p["answer"], [a for a, _ in ex.label])[1] for p, ex in zip(preds, ds.examples)])
    assert f1 == pytest.approx(m["test"]["f1"])  # the Engine path decodes what the training path decodes
    task = QATask(load_tokenizer(tiny_model), [], [], max_length=96, stride=32)
    assert task.metrics({"loss": 1.0, "count": 1.0}) == {"loss": 1.0, "exact_match": 0.0, "f1": 0.0}
