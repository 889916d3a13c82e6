"""`encoderforge index mine`: hard negatives for training pairs, mined from a first-stage index.

    encoderforge index mine runs/ix-train train.pairs.jsonl train.mined.jsonl --negatives 7

Each {"query", "positive"} row is searched against the index (dense with its own model, or BM25); its negatives are
the best-ranked documents whose text is none of that query's positives (every row with the same query text counts),
after skipping the first `skip` of them (a guard against unlabelled relevant documents: sentence-transformers'
`mine_hard_negatives` calls it range_min). With `sample_depth` D the negatives are drawn at random (seeded, one draw
per query) from the non-positive documents among the top D hits instead (still after the first `skip`): the
candidates a re-ranker of depth D will face. Taking only the best-ranked ones misleads a re-ranker whose first stage
is weak: they sit above the positive for most queries, so it learns "prefer the less similar candidate"
(docs/results.md, issue 17, sixteenth session; Gao et al. 2021 sample from the retriever's top too). `found_only`
also leaves out the rows whose positive is not among those top D: a re-ranker only re-orders candidate lists the
first stage filled. The rows come back with "negatives": [...] (replacing any they had), ready
for `finetune rerank` (the negatives a re-ranker will face are its first stage's top hits: train on those) or for
`finetune embed` (hard negatives for MNRL). Index the training split's documents only, so no dev/test document
becomes training text.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, pair_fields, read_dataset, text_key
from encoderforge.fileio import atomic_file, check_output
from encoderforge.index.readers import read_docs
from encoderforge.index.retrievers import open_index

BATCH = 256  # queries searched per call (progress granularity; the embedder batches inside)


@dataclass
class MineResult:
    out: Path
    rows: int
    queries: int
    short: int  # rows that got fewer than the requested negatives (the search depth held too few other documents)
    unindexed: int  # rows whose positive is no document of the index (its text differs, or another corpus)
    dropped: int = 0  # rows left out by found_only: their positive is not among the top sample_depth hits


def mine_negatives(
    index: str | Path,
    pairs: str | Path,
    out: str | Path,
    *,
    negatives: int = 7,
    skip: int = 0,
    corpus: str | Path | None = None,
    model: str | None = None,
    overwrite: bool = False,
    sample_depth: int = 0,
    seed: int = 0,
    found_only: bool = False,
) -> MineResult:
    """Write `pairs` with mined "negatives" to `out` (atomically). Args as the module docstring; `corpus`: the
    documents' texts when the index stores none; `model`: query model of a dense index (default: its manifest's)."""
    if negatives < 1 or skip < 0:
        raise EncoderforgeError(f"--negatives must be >= 1 and --skip >= 0 (got {negatives}, {skip})")
    least = skip + negatives + found_only  # with --found-only a kept row's positive takes one of the D places
    if sample_depth and sample_depth < least:
        raise EncoderforgeError(
            f"--sample-depth {sample_depth} must be 0 (off) or at least --skip + --negatives"
            f"{' + 1 (the positive is among them)' if found_only else ''} = {least}: "
            "the negatives are drawn from the top --sample-depth hits"
        )
    if found_only and not sample_depth:
        raise EncoderforgeError(
            "--found-only keeps the rows whose positive is among the top --sample-depth hits: pass --sample-depth"
        )
    target = check_output(out, [pairs, corpus, index], flag="OUT", expect="file")
    if target.exists() and not overwrite:
        raise EncoderforgeError(f"{target} exists; pass --overwrite to replace it, or choose another OUT")
    schema = Schema(label_type="pairs")
    (qf, pf), nf = pair_fields(schema)
    ds = read_dataset(pairs, schema)
    graded = next((ex for ex in ds.examples if not isinstance(ex.label, list)), None)
    if graded is not None:
        raise EncoderforgeError(
            f"{graded.where}: a graded pair (a similarity score in {nf!r}); mining needs ranking pairs "
            '{"query", "positive"}: drop the score'
        )
    retriever = open_index(index, model=model)
    texts = {d.id: d.text for d in read_docs(corpus)} if corpus else {}
    texts = texts or {i: str(m["text"]) for i, m in retriever.meta.items() if "text" in m}
    if not texts:
        raise EncoderforgeError(f"{index}: the index stores no document texts; pass --corpus (the JSONL it was built from)")
    positives: dict[str, set[str]] = {}
    for ex in ds.examples:
        positives.setdefault(text_key(ex.texts[0]), set()).add(text_key(ex.texts[1]))
    queries = list(dict.fromkeys(ex.texts[0] for ex in ds.examples))  # unique, in file order
    indexed = {text_key(t) for t in texts.values()}
    unindexed = sum(text_key(ex.texts[1]) not in indexed for ex in ds.examples)
    mined: dict[str, list[str]] = {}
    found: dict[str, set[str]] = {}  # each query's positives among its hits
    for i in range(0, len(queries), BATCH):
        chunk = queries[i : i + BATCH]
        most = max(len(positives[text_key(q)]) for q in chunk)
        hits = retriever.search(chunk, sample_depth or skip + negatives + most + 10)
        for q, ids in zip(chunk, hits.ids):
            pos, seen, keep = positives[text_key(q)], set(), []
            found[q] = set()
            for d in ids:
                t = texts.get(d)
                if t is None:
                    where = f"--corpus {corpus}" if corpus else f"the index {index}"
                    raise EncoderforgeError(
                        f"document {d!r} has no text in {where}; pass the corpus JSONL the index was built from"
                    )
                if text_key(t) in pos:
                    found[q].add(text_key(t))
                if text_key(t) in pos or text_key(t) in seen:
                    continue
                seen.add(text_key(t))
                keep.append(t)
            if sample_depth:  # keep = the top D hits' non-positive documents (the search went D deep)
                pool = keep[skip:]
                mined[q] = random.Random(f"{seed}:{q}").sample(pool, min(negatives, len(pool)))
            else:
                mined[q] = keep[skip : skip + negatives]
    short = dropped = 0
    written: set[str] = set()  # queries with a row in the output
    with atomic_file(target, encoding="utf-8") as f:
        for ex in ds.examples:
            if found_only and text_key(ex.texts[1]) not in found[ex.texts[0]]:
                dropped += 1
                continue
            negs = mined[ex.texts[0]]
            written.add(ex.texts[0])
            short += len(negs) < negatives
            f.write(json.dumps({qf: ex.texts[0], pf: ex.texts[1], nf: negs}, ensure_ascii=False) + "\n")
    return MineResult(target, len(ds.examples) - dropped, len(written), short, unindexed, dropped)
