"""Fixtures for fine-tuning tests: a randomly initialised bert-tiny checkpoint that uses MiniLM's real tokenizer
(fast), and small real labelled sets (BBC News, WNUT-16, licensedcode rules)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # every task test on one thread (tests/conftest.py)
    yield


@pytest.fixture
def ft_config():
    """A fine-tuning config for a test run: task, start model, run directory, then dotted keys as the CLI sets them
    (recipes.finetune_config.finetune_config)."""
    from encoderforge.recipes.finetune_config import finetune_config

    def make(task: str, model: Path, out: Path, values: dict | None = None):
        return finetune_config(task, values={"model": str(model), "train.out_dir": str(out), **(values or {})})

    return make


@pytest.fixture(scope="session")
def license_rule_rows() -> list[tuple[str, list[str]]]:
    """Real multi-label examples: licensedcode rule texts labelled with the license keys their license_expression
    names, restricted to five frequent keys (60 rules, a third of them naming two or more keys)."""
    from encoderforge.data.datasets import pkg_file

    keys = {"mit", "apache-2.0", "gpl-2.0", "bsd-new", "lgpl-2.1"}
    rules = sorted(pkg_file("licensedcode-data", "mit.LICENSE").parent.parent.joinpath("rules").glob("*.RULE"))
    single, multi = [], []
    for p in rules:
        raw = p.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^license_expression:\s*(.+)$", raw, re.M)
        body = raw.split("---", 2)[-1].strip()
        if not m or not body:
            continue
        found = set(re.findall(r"[a-z0-9.+_-]+", m.group(1).lower())) - {"and", "or", "with"}
        if found and found <= keys:
            (multi if len(found) > 1 else single).append((body[:400], sorted(found)))
    return single[::37][:40] + multi[:20]


LICENSE_KEYS = ["mit", "apache-2.0", "gpl-2.0", "bsd-new", "lgpl-2.1", "mpl-2.0", "isc", "bsd-simplified", "epl-1.0", "zlib"]


@pytest.fixture(scope="session")
def license_pairs() -> list[dict]:
    """Real pairs: up to 6 licensedcode rule texts per license key -> that license's text (first 1,500 chars)."""
    from encoderforge.data.datasets import license_parts, pkg_file

    lic_dir = pkg_file("licensedcode-data", "mit.LICENSE").parent
    docs = {k: (license_parts(lic_dir / f"{k}.LICENSE") or ("", ""))[1][:1500] for k in LICENSE_KEYS}
    out, count = [], {k: 0 for k in LICENSE_KEYS}
    for p in sorted((lic_dir.parent / "rules").glob("*.RULE")):
        raw = p.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^license_expression:\s*(\S+)\s*$", raw, re.M)
        body = " ".join(raw.split("---", 2)[-1].split())
        if m and m.group(1) in docs and count[m.group(1)] < 6 and len(body.split()) >= 5:
            count[m.group(1)] += 1
            out.append({"query": body[:300], "positive": docs[m.group(1)], "key": m.group(1)})
    return out
