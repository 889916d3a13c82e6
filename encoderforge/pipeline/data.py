"""The `data` stage: a bundled real data set -> RUN/data/{train,dev,test}.jsonl (what the finetune stage reads).

licensedcode-rules: licensedcode-data's rule snippets (CC-BY-4.0) labelled with the license keys their
`license_expression` names (multi-label), kept when every key is in `labels`; deduplicated by text, shuffled with
the seed, split into disjoint train/dev/test.
"""

from __future__ import annotations

import json
import random
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from encoderforge.data.datasets import pkg_file
from encoderforge.fileio import atomic_file
from encoderforge.pipeline.config import DataStage


def data_version() -> str:
    """The installed data package's version: part of the data stage's hash."""
    try:
        return version("licensedcode-data")
    except PackageNotFoundError:
        return "missing"


def license_rule_examples(labels: list[str], max_chars: int) -> list[tuple[str, list[str]]]:
    """(snippet, sorted license keys) for every rule whose expression names only keys in `labels`, deduplicated."""
    keys = set(labels)
    rules = sorted(pkg_file("licensedcode-data", "mit.LICENSE").parent.parent.joinpath("rules").glob("*.RULE"))
    seen: set[str] = set()
    out: list[tuple[str, list[str]]] = []
    for p in rules:
        raw = p.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^license_expression:\s*(.+)$", raw, re.M)
        body = " ".join(raw.split("---", 2)[-1].split())[:max_chars]
        if not m or len(body) < 20 or body.lower() in seen:
            continue
        found = set(re.findall(r"[a-z0-9.+_-]+", m.group(1).lower())) - {"and", "or", "with"}
        if found and found <= keys:
            seen.add(body.lower())
            out.append((body, sorted(found)))
    return out


def write_data(cfg: DataStage, out: Path) -> dict[str, Any]:
    """Write the splits to `out` and return their sizes and label counts (RUN/data/stats.json)."""
    rows = license_rule_examples(cfg.labels, cfg.max_chars)
    random.Random(cfg.seed).shuffle(rows)
    # multi-key snippets are the informative minority: keep them in every split in proportion
    multi = [r for r in rows if len(r[1]) > 1]
    single = [r for r in rows if len(r[1]) == 1]
    total = cfg.max_train + cfg.max_dev + cfg.max_test
    share = len(multi) / max(len(rows), 1)
    pool = multi[: round(total * share)] + single[: total - round(total * share)]
    random.Random(cfg.seed + 1).shuffle(pool)
    splits = {
        "test": pool[: cfg.max_test],
        "dev": pool[cfg.max_test : cfg.max_test + cfg.max_dev],
        "train": pool[cfg.max_test + cfg.max_dev : total],
    }
    stats: dict[str, Any] = {
        "source": cfg.source,
        "package": f"licensedcode-data=={data_version()}",
        "available": len(rows),
        "splits": {},
    }
    for name, items in splits.items():
        with atomic_file(out / f"{name}.jsonl", encoding="utf-8") as f:
            for text, labels in items:
                f.write(json.dumps({"text": text, "label": labels}, ensure_ascii=False) + "\n")
        counts: dict[str, int] = {}
        for _, labels in items:
            for lab in labels:
                counts[lab] = counts.get(lab, 0) + 1
        stats["splits"][name] = {"examples": len(items), "labels": dict(sorted(counts.items()))}
    return stats
