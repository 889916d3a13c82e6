"""Fine-tuning with transformers' `Trainer` and ITS OWN defaults: the `Trainer` arm of "defaults vs defaults".

The same base model as encoderforge (MiniLM-L6, `resolve_model("minilm-l6")`), fine-tuned the way a new user
following the transformers docs would: AutoModelForSequenceClassification (classify; multilabel with
problem_type="multi_label_classification", float multi-hot labels) or AutoModelForTokenClassification (ner, labels on
each word's first word piece, the other pieces -100, as the token-classification guide does), the tokenizer with
truncation at 128 tokens, DataCollatorWithPadding / DataCollatorForTokenClassification, and `TrainingArguments`
left at its defaults:
    learning_rate 5e-5, num_train_epochs 3, per_device_train_batch_size 8 (eval 8), AdamW (betas 0.9/0.999,
    eps 1e-8), weight_decay 0, linear decay, no warmup, max_grad_norm 1, no evaluation during training and no best-
    checkpoint selection: the model after the last step is the result.
Only what running here needs is set: use_cpu, report_to="none", save_strategy="no" (no checkpoint files), seed
(also seeds the new head's init), disable_tqdm, dataloader_pin_memory=False and torch threads. A --dev file is
neither trained nor evaluated on (the default eval_strategy is "no"; ner only takes its tags into the label set).
Test metrics are encoderforge's own definitions
(encoderforge.tasks.classification / multilabel / ner): classify accuracy + macro-F1, multilabel micro/macro-F1 at
sigmoid >= 0.5, ner seqeval entity micro P/R/F1. Needs the `baselines` extra (accelerate, seqeval).

    python benchmarks/trainer_defaults.py --task classify --train runs/data/license-category/train.jsonl \\
        --test runs/data/license-category/test.jsonl --dev runs/data/license-category/dev.jsonl --out runs/td/lc
    python benchmarks/trainer_defaults.py --task ner --train F.conll --test F.conll --out DIR [--seed 0]
        [--threads 1] [--labels a,b,c] [--limit N (first N train/test rows: smoke checks only)] [--overwrite]
Writes OUT/metrics.json (and OUT/predictions.jsonl: gold and predicted label(s)/tags per test row).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

MAX_LENGTH = 128


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def read_conll(path: str) -> list[tuple[list[str], list[str]]]:
    """`token<TAB>tag` lines (else whitespace-split; first and last column), a blank line between sentences."""
    out: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines() + [""]:
        if not raw.strip() or raw.startswith("-DOCSTART-"):
            if words:
                out.append((words, tags))
            words, tags = [], []
            continue
        parts = raw.split("\t") if "\t" in raw else raw.split()
        words.append(parts[0])
        tags.append(parts[-1].strip())
    return out


def read(task: str, path: str | None, limit: int | None = None) -> list:
    if path is None:
        return []
    rows = read_conll(path) if task == "ner" else read_jsonl(path)
    return rows[:limit] if limit else rows


def label_set(a: argparse.Namespace, train: list, dev: list, test: list) -> list[str]:
    if a.labels:
        return [x.strip() for x in a.labels.split(",") if x.strip()]
    if a.task == "classify":
        return sorted({r["label"] for r in train})
    if a.task == "multilabel":
        return sorted({lab for r in train for lab in r["label"]})
    return sorted({t for rows in (train, dev, test) for _, tags in rows for t in tags})  # ner: no KeyError anywhere


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", required=True, choices=["classify", "multilabel", "ner"])
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--dev", default=None, help="recorded as unused: Trainer's default is no evaluation")
    p.add_argument("--labels", default=None, help="comma-separated label set (default: sorted labels seen)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N train and test rows (smoke checks only)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    if (out / "metrics.json").exists() and not a.overwrite:
        print(f"error: {out / 'metrics.json'} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    import torch
    import transformers
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from encoderforge.model.zoo import resolve_model

    torch.set_num_threads(a.threads)
    train, test = read(a.task, a.train, a.limit), read(a.task, a.test, a.limit)
    dev = read(a.task, a.dev) if a.task == "ner" and not a.labels else []  # ner label set only; never trained on
    labels = label_set(a, train, dev, test)
    index = {lab: i for i, lab in enumerate(labels)}
    path = str(resolve_model("minilm-l6"))
    tok = AutoTokenizer.from_pretrained(path)
    transformers.set_seed(a.seed)  # the new head's init happens before Trainer seeds anything
    kw = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": index}

    if a.task == "ner":

        def encode(rows: list, with_labels: bool) -> tuple[list[dict], list[list[int]]]:
            enc = tok([w for w, _ in rows], is_split_into_words=True, truncation=True, max_length=MAX_LENGTH)
            feats, firsts = [], []
            for i, (words, tags) in enumerate(rows):
                word_ids, first, lab, prev = enc.word_ids(i), [-1] * len(words), [], None
                for pos, w in enumerate(word_ids):
                    if w is not None and w != prev:
                        first[w] = pos
                    lab.append(index[tags[w]] if w is not None and w != prev else -100)
                    prev = w
                f = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
                feats.append({**f, "labels": lab} if with_labels else f)
                firsts.append(first)  # -1: a word cut by truncation (or with no piece); it is tagged "O"
            return feats, firsts

        model = AutoModelForTokenClassification.from_pretrained(path, **kw)
        collator = DataCollatorForTokenClassification(tok)
    else:
        multi = a.task == "multilabel"

        def target(r: dict) -> int | list[float]:
            if multi:
                return [float(lab in r["label"]) for lab in labels]
            return index[r["label"]]

        def encode(rows: list, with_labels: bool) -> tuple[list[dict], list[list[int]]]:
            enc = tok([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH)
            feats = [{"input_ids": ids, "attention_mask": m} for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
            return ([{**f, "labels": target(r)} for f, r in zip(feats, rows)] if with_labels else feats), []

        if multi:
            kw["problem_type"] = "multi_label_classification"
        model = AutoModelForSequenceClassification.from_pretrained(path, **kw)
        collator = DataCollatorWithPadding(tok)

    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        seed=a.seed,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    train_feats, _ = encode(train, True)
    test_feats, test_first = encode(test, False)  # no labels: unknown test labels can't break anything
    trainer = Trainer(model=model, args=args, train_dataset=train_feats, data_collator=collator, processing_class=tok)
    tr = trainer.train()
    logits = trainer.predict(test_feats).predictions

    if a.task == "classify":
        from encoderforge.tasks.classification import classification_metrics

        # a test label outside the label set gets its own class id (never predicted): wrong, and a 0 in macro-F1
        names = labels + sorted({r["label"] for r in test} - set(labels))
        gold = np.array([names.index(r["label"]) for r in test])
        pred = logits.argmax(-1)
        m = classification_metrics(gold, pred, names)
        metrics = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        preds = [{"gold": r["label"], "pred": labels[i]} for r, i in zip(test, pred)]
    elif a.task == "multilabel":
        from encoderforge.tasks.multilabel import multilabel_metrics

        # >= 0.5 as encoderforge's "*_at_0.5". Macro-F1 averages over labels present in gold or predictions (a label
        # with neither is left out, encoderforge's f1_report); a test label outside the label set is a miss (fn).
        names = labels + sorted({lab for r in test for lab in r["label"]} - set(labels))
        gold = np.array([[int(lab in r["label"]) for lab in names] for r in test], dtype=int).reshape(len(test), -1)
        prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
        pred = np.zeros_like(gold)
        pred[:, : len(labels)] = prob >= 0.5
        m = multilabel_metrics(gold, pred, names)
        metrics = {"micro_f1": m["micro_f1"], "macro_f1": m["macro_f1"]}
        preds = [{"gold": r["label"], "pred": [lab for lab, b in zip(labels, row) if b]} for r, row in zip(test, pred)]
    else:
        from seqeval.metrics import f1_score, precision_score, recall_score

        from encoderforge.tasks.ner import decode

        pred_tags = [decode(lg, first, labels) for lg, first in zip(logits, test_first)]
        gold_tags = [tags for _, tags in test]
        metrics = {
            "precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
            "recall": float(recall_score(gold_tags, pred_tags, zero_division=0)),
            "f1": float(f1_score(gold_tags, pred_tags, zero_division=0)),
        }
        preds = [{"gold": g, "pred": pt} for g, pt in zip(gold_tags, pred_tags)]

    result = {
        "task": a.task,
        "test": metrics,
        "train_s": tr.metrics["train_runtime"],
        "total_s": time.perf_counter() - t0,
        "train_loss": tr.metrics.get("train_loss"),
        "epochs": args.num_train_epochs,
        "lr": args.learning_rate,
        "batch_size": args.per_device_train_batch_size,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "lr_scheduler": str(args.lr_scheduler_type.value),
        "max_length": MAX_LENGTH,
        "seed": a.seed,
        "threads": a.threads,
        "labels": labels,
        "train": a.train,
        "test_file": a.test,
        "dev_unused": a.dev,  # Trainer's default eval_strategy="no": the dev file plays no part
        "limit": a.limit,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "train_examples": len(train),
        "test_examples": len(test),
    }
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:  # test predictions, in order, for checks
        f.writelines(json.dumps(x) + "\n" for x in preds)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "metrics.json")
    shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"trainer-defaults {a.task}: test {shown} | train {result['train_s']:.1f}s total {result['total_s']:.1f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
