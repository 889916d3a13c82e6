"""Zero-shot legal search with each encoder's mean-pooled embeddings: licensedcode rule snippet -> its license text.

    python benchmarks/legal_retrieval.py minilm-l6 runs/adapt/mlm/model runs/adapt/mlm-anchored/model

Documents: every license text (*.LICENSE, YAML front matter removed, exact duplicates dropped), keyed by license.
Queries: a seeded sample of rule texts (*.RULE) whose `license_expression` is one key that has a document, rules
identical to a license text dropped. A query is answered when its license ranks first (recall@1) or in the top 10;
MRR over all queries. Nothing is trained here: this measures what continued pretraining did to the embeddings
(docs/results-pretrain.md). Note: the domain-adaptation MLM corpus is the license-category *training* texts, so
most documents here were seen (unlabelled) by continued MLM; no rule text was.
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import torch

from encoderforge import EncoderforgeError
from encoderforge.data import datasets
from encoderforge.inference.engine import Engine
from encoderforge.model.zoo import resolve_model


def corpus() -> tuple[list[str], list[str]]:
    """(license keys, texts) of the license documents."""
    keys, texts, seen = [], [], set()
    for p in datasets.license_texts():
        body = (datasets.license_parts(p) or ("", ""))[1]
        if body and body.lower() not in seen:
            seen.add(body.lower())
            keys.append(p.stem)
            texts.append(body)
    return keys, texts


def queries(doc_keys: set[str], doc_texts: set[str], n: int, seed: int) -> list[tuple[str, str]]:
    """(rule text, license key) for single-key rules whose key has a document."""
    rules_dir = datasets.pkg_file("licensedcode-data", "mit.LICENSE").parent.parent / "rules"
    out, seen = [], set(doc_texts)
    for p in sorted(rules_dir.glob("*.RULE")):
        raw = p.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^license_expression:\s*(\S+)\s*$", raw, re.M)
        body = " ".join(raw.split("---", 2)[-1].split())
        if m and m.group(1) in doc_keys and body and body.lower() not in seen:
            seen.add(body.lower())
            out.append((body, m.group(1)))
    pick = np.random.default_rng(seed).choice(len(out), size=min(n, len(out)), replace=False)
    return [out[i] for i in sorted(pick)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="zoo names or checkpoint directories")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--max-length", type=int, default=128, help="tokens per text (documents and queries)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keys, texts = corpus()
    qs = queries(set(keys), {t.lower() for t in texts}, a.queries, a.seed)
    gold = np.array([keys.index(k) for _, k in qs])
    for name in a.models:
        try:
            engine = Engine.from_pretrained(resolve_model(name), max_length=a.max_length)
        except EncoderforgeError as e:
            raise SystemExit(f"error: {e}") from None
        docs = np.asarray(engine.embed(texts))
        q = np.asarray(engine.embed([t for t, _ in qs]))
        scores = q @ docs.T
        rank = (scores > scores[np.arange(len(qs)), gold][:, None]).sum(1)  # 0 = the license ranks first
        print(
            json.dumps(
                {
                    "model": name,
                    "queries": len(qs),
                    "documents": len(texts),
                    "recall@1": round(float((rank == 0).mean()), 4),
                    "recall@10": round(float((rank < 10).mean()), 4),
                    "mrr": round(float((1.0 / (rank + 1)).mean()), 4),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
