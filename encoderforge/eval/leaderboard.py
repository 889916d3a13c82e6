"""`encoderforge eval`: one table across fine-tuned run directories (Markdown for people, JSON for tools)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_file

# per task kind: the metrics shown, primary first
COLUMNS = {
    "classify": ("accuracy", "macro_f1"),
    "multilabel": ("micro_f1", "macro_f1", "exact_match"),
    "ner": ("f1", "precision", "recall"),
    "regress": ("pearson", "spearman"),
    "qa": ("f1", "exact_match"),
    "embed": ("ndcg@10", "mrr@10", "recall@10"),
    "retrieval": ("ndcg@10", "mrr@10", "recall@10", "recall@100"),
}


@dataclass
class Leaderboard:
    rows: list[dict[str, Any]]
    markdown: str


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (holding task.json and metrics.json) among `paths` and one level below them."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise EncoderforgeError(f"{p}: no such directory; pass run directories written by `encoderforge finetune`")
        if (p / "metrics.json").exists() and (p / "task.json").exists():
            runs.append(p)
        else:
            runs.extend(sorted(c for c in p.iterdir() if (c / "metrics.json").exists() and (c / "task.json").exists()))
    if not runs:
        raise EncoderforgeError(f"no finished runs (task.json + metrics.json) under {[str(p) for p in paths]}")
    return runs


def leaderboard(paths: Sequence[str | Path], out: str | Path | None = None) -> Leaderboard:
    """Collect every run's kind, model, data, dev/test metrics and cost; sorted by task, then primary test (or dev)
    metric, best first.

    Args:
        paths: run directories, or folders whose subdirectories are runs.
        out: if given, write OUT.md and OUT.json.
    Returns:
        the rows and the Markdown table.
    """
    rows = []
    for run in find_runs(paths):
        meta = json.loads((run / "task.json").read_text(encoding="utf-8"))
        m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        cfg_file = run / "config.json"
        cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.exists() else {}
        kind = meta.get("kind", "?")
        row: dict[str, Any] = {
            "run": run.name,
            "path": str(run),
            "kind": kind,
            "model": m.get("model", ""),
            "train": "/".join(Path((cfg.get("train_files") or {}).get("train") or "").parts[-2:]),
            "primary": m.get("primary"),
        }
        for split in ("dev", "test"):
            for k in COLUMNS.get(kind, ()):
                v = m.get(split, {}).get(k)
                row[f"{split}_{k}"] = None if v is None else round(100 * float(v), 2)
        for k in ("epochs_run", "best_epoch", "s_per_epoch", "peak_rss_mb", "train_examples"):
            row[k] = m.get(k)
        rows.append(row)

    def key(r: dict) -> tuple:
        score = r.get(f"test_{r['primary']}") if r.get(f"test_{r['primary']}") is not None else r.get(f"dev_{r['primary']}")
        return (r["kind"], -(score or 0.0))

    rows.sort(key=key)
    md = _markdown(rows)
    if out is not None:
        out = Path(out)
        with atomic_file(out.with_suffix(".md")) as f:
            f.write(md)
        with atomic_file(out.with_suffix(".json")) as f:
            json.dump(rows, f, indent=2)
    return Leaderboard(rows=rows, markdown=md)


def _markdown(rows: list[dict[str, Any]]) -> str:
    parts = []
    for kind in sorted({r["kind"] for r in rows}):
        mets = COLUMNS.get(kind, ())
        head = [
            "run",
            "model",
            "train",
            *[f"dev {m}" for m in mets],
            *[f"test {m}" for m in mets],
            "epochs",
            "best epoch",
            "s/epoch",
            "peak RSS MB",
        ]
        lines = [f"### {kind}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (r for r in rows if r["kind"] == kind):
            cells = [
                r["run"],
                r["model"],
                r["train"],
                *[_fmt(r.get(f"dev_{m}")) for m in mets],
                *[_fmt(r.get(f"test_{m}")) for m in mets],
                _fmt(r["epochs_run"]),
                _fmt(r["best_epoch"]),
                _fmt(r["s_per_epoch"]),
                _fmt(r["peak_rss_mb"]),
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
