"""Off-the-shelf baselines beside the fine-tuned encoders, on the same folds / splits (docs/results-finetune.md).

  vader-cv        VADER's own lexicon + rules (vaderSentiment 3.3.2): compound >= 0.05 positive, <= -0.05 negative,
                  else neutral (its README's thresholds; the same ones turn the human mean valence into gold labels)
  vader-cv, bbc-cv, license-category
                  TF-IDF (word 1-2-grams, sublinear tf) + logistic regression (scikit-learn, C=10, class-balanced
                  off): the standard strong bag-of-words baseline, fitted on each fold's training part.
  wnut-cv         a gazetteer learned from each fold's training part: every entity string seen there (lower-cased)
                  tagged with its most frequent type wherever it occurs in the held-out fold, longest match first
                  (the memorisation baseline of the WNUT shared tasks); entity-level F1 by seqeval.
Accuracy and macro-F1 per fold, mean and standard deviation over folds; JSON to OUT/baselines.json.

    python benchmarks/prepare_finetune_data.py --out runs/data
    python benchmarks/baselines.py --data runs/data --out runs/baselines
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def scores(gold: list[str], pred: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": 100 * accuracy_score(gold, pred), "macro_f1": 100 * f1_score(gold, pred, average="macro")}


def tfidf_lr(train: list[dict], test: list[dict]) -> list[str]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1), LogisticRegression(C=10.0, max_iter=2000)
    )
    clf.fit([r["text"] for r in train], [r["label"] for r in train])
    return list(clf.predict([r["text"] for r in test]))


def vader(test: list[dict]) -> list[str]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    out = []
    for r in test:
        c = sia.polarity_scores(r["text"])["compound"]
        out.append("positive" if c >= 0.05 else "negative" if c <= -0.05 else "neutral")
    return out


def read_conll(path: Path) -> list[list[tuple[str, str]]]:
    blocks = path.read_text(encoding="utf-8").strip().split("\n\n")
    return [[tuple(line.split("\t")) for line in b.splitlines()] for b in blocks if b.strip()]


def gazetteer(train: list[list[tuple[str, str]]], test: list[list[tuple[str, str]]]) -> dict[str, float]:
    import collections

    from seqeval.metrics import f1_score, precision_score, recall_score

    types: dict[tuple[str, ...], collections.Counter] = collections.defaultdict(collections.Counter)
    for sent in train:
        span: list[str] = []
        kind = ""
        for tok, tag in [*sent, ("", "O")]:
            if span and not tag.startswith("I-"):
                types[tuple(span)][kind] += 1
                span = []
            if tag.startswith("B-"):
                span, kind = [tok.lower()], tag[2:]
            elif tag.startswith("I-") and span:
                span.append(tok.lower())
    known = {k: c.most_common(1)[0][0] for k, c in types.items()}
    longest = max(map(len, known), default=1)
    pred = []
    for sent in test:
        words, tags, i = [t.lower() for t, _ in sent], ["O"] * len(sent), 0
        while i < len(words):
            for n in range(min(longest, len(words) - i), 0, -1):
                kind = known.get(tuple(words[i : i + n]))
                if kind:
                    tags[i : i + n] = [f"B-{kind}"] + [f"I-{kind}"] * (n - 1)
                    i += n
                    break
            else:
                i += 1
        pred.append(tags)
    gold = [[g for _, g in sent] for sent in test]
    return {
        "f1": 100 * f1_score(gold, pred),
        "precision": 100 * precision_score(gold, pred),
        "recall": 100 * recall_score(gold, pred),
    }


def summarise(per_fold: list[dict[str, float]]) -> dict:
    keys = per_fold[0].keys()
    return {
        "folds": per_fold,
        **{f"{k}_mean": statistics.mean(f[k] for f in per_fold) for k in keys},
        **{f"{k}_sd": statistics.stdev(f[k] for f in per_fold) if len(per_fold) > 1 else 0.0 for k in keys},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="runs/data")
    p.add_argument("--out", default="runs/baselines")
    a = p.parse_args()
    data, res = Path(a.data), {}
    for name in ("vader-cv", "bbc-cv"):
        folds = sorted((data / name).glob("fold*"))
        if not folds:
            raise SystemExit(f"{data / name}: no folds; run benchmarks/prepare_finetune_data.py --out {data}")
        splits = [(read_jsonl(f / "train.jsonl"), read_jsonl(f / "test.jsonl")) for f in folds]
        res[f"{name}/tfidf-lr"] = summarise([scores([r["label"] for r in te], tfidf_lr(tr, te)) for tr, te in splits])
        if name == "vader-cv":
            res[f"{name}/vader"] = summarise([scores([r["label"] for r in te], vader(te)) for _, te in splits])
    folds = sorted((data / "wnut-cv").glob("fold*"))
    res["wnut-cv/gazetteer"] = summarise(
        [gazetteer(read_conll(f / "train.conll") + read_conll(f / "dev.conll"), read_conll(f / "test.conll")) for f in folds]
    )
    lic = data / "license-category"
    tr, te = read_jsonl(lic / "train.jsonl"), read_jsonl(lic / "test.jsonl")
    res["license-category/tfidf-lr"] = summarise([scores([r["label"] for r in te], tfidf_lr(tr, te))])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(
            f"{k}: "
            + ", ".join(f"{m} {v[m + '_mean']:.2f} +- {v[m + '_sd']:.2f}" for m in v["folds"][0])
            + f" ({len(v['folds'])} fold(s))"
        )


if __name__ == "__main__":
    main()
