"""The run's model table, read from its metrics files only (what the CLI prints and the report shows)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ANCHOR = "transformers BertModel"
BASELINE = "TF-IDF + LR"
BASE = "base model fine-tuned (no adapt)"  # evaluate's comparison when the adapt stage ran
PROBE = "frozen encoder + LR (probe)"  # logistic regression on the start encoder's pooled features (finetune's own)


def read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@dataclass
class ModelRow:
    model: str
    metric: float | None = None
    mb: float | None = None
    texts_per_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    vs_baseline: float | None = None  # metric minus the TF-IDF baseline's, in points (x100)


@dataclass
class SearchRow:
    """One retriever of the index stage (role: finetuned | base | bm25) and its metrics on the judged queries."""

    name: str
    role: str
    ndcg: float | None
    mrr: float | None
    recall: float | None  # recall@10
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class SearchSummary:
    """The index stage: its retrievers best first (nDCG@10), the corpus and index it searched, and the verdict."""

    rows: list[SearchRow]
    verdict: str
    corpus: str
    documents: int
    queries: int
    kind: str
    mb: float | None


@dataclass
class Summary:
    primary: str
    rows: list[ModelRow]
    verdict: str
    domain: str = ""  # the adapt stage's verdict (adapted vs the start model fine-tuned the same way), if it ran
    search: SearchSummary | None = None  # the index stage, if it ran


def summarize(run: Path) -> Summary:
    """One row per model: the fine-tuned fp32 and int8 encoders, the TF-IDF baseline, the transformers anchor."""
    ft, comp = read(run / "finetune" / "metrics.json"), read(run / "compress" / "metrics.json")
    ev, bench = read(run / "evaluate" / "metrics.json"), read(run / "bench" / "metrics.json")
    primary = ev.get("primary") or ft.get("primary") or "metric"
    tests: dict[str, Any] = dict(ev.get("models") or {})
    tests.setdefault("fine-tuned fp32", ft.get("test"))
    if comp:
        tests.setdefault("fine-tuned int8", comp.get("test"))
    speed: dict[str, Any] = bench.get("models") or {}
    mb = {"fine-tuned fp32": comp.get("bytes_fp32_file"), "fine-tuned int8": comp.get("bytes_int8_weights")}
    if not mb["fine-tuned fp32"] and (run / "finetune" / "model" / "model.safetensors").is_file():
        mb["fine-tuned fp32"] = (run / "finetune" / "model" / "model.safetensors").stat().st_size
    mb[ANCHOR] = mb[BASE] = mb[PROBE] = mb["fine-tuned fp32"]
    base = (tests.get(BASELINE) or {}).get(primary)
    rows = []
    for name in [*tests, *(k for k in speed if k not in tests)]:
        m = (tests.get(name) or {}).get(primary)
        s = speed.get(name) or {}
        if name == BASELINE and "texts_per_s" in (tests.get(name) or {}):
            s = {"texts_per_s": tests[name]["texts_per_s"]}
        b = mb.get(name)
        rows.append(
            ModelRow(
                name,
                m,
                round(b / 2**20, 1) if b else None,
                s.get("texts_per_s"),
                s.get("p50_ms"),
                s.get("p95_ms"),
                round(100 * (m - base), 1) if m is not None and base is not None and name != BASELINE else None,
            )
        )
    domain = adapt_verdict(primary, tests, ev.get("seed_spread"), ev.get("base_spread")) if BASE in tests else ""
    text = verdict(primary, tests, ev.get("seed_spread"))
    probe, enc = (tests.get(PROBE) or {}).get(primary), (tests.get("fine-tuned fp32") or {}).get(primary)
    if probe is not None and enc is not None:
        gain = 100 * (enc - probe)
        text += (
            f" Fine-tuning {'added' if gain >= 0 else 'LOST'} {abs(gain):.1f} points over a logistic regression on the "
            f"frozen encoder's features ({enc:.3f} vs {probe:.3f}, the run's own seed)."
        )
    return Summary(primary, rows, text, domain, search_summary(run))


def search_summary(run: Path) -> SearchSummary | None:
    """The index stage's retrievers from RUN/index/metrics.json, best nDCG@10 first, with the verdict."""
    ix = read(run / "index" / "metrics.json")
    if not ix.get("retrievers"):
        return None
    rows = [
        SearchRow(n, m.get("role", ""), m.get("ndcg@10"), m.get("mrr@10"), m.get("recall@10"), m.get("p50_ms"), m.get("p99_ms"))
        for n, m in ix["retrievers"].items()
    ]
    rows.sort(key=lambda r: -1.0 if r.ndcg is None else -r.ndcg)  # sort is stable: ties keep the stage's order
    corpus, queries, index = ix.get("corpus") or {}, ix.get("queries") or {}, ix.get("index") or {}
    n_docs, n_q = int(corpus.get("documents") or 0), int(queries.get("count") or 0)
    return SearchSummary(
        rows,
        search_verdict(rows, n_docs, n_q),
        str(corpus.get("source", "")),
        n_docs,
        n_q,
        str(index.get("kind", "")),
        index.get("mb"),
    )


def search_verdict(rows: list[SearchRow], documents: int, queries: int) -> str:
    """Did the fine-tuned model's index beat each other retriever on nDCG@10: 'beat', 'did NOT beat', or within a
    point either way (one test set, no seeds: smaller gaps are noise), and which retriever is best."""
    ft = next((r for r in rows if r.role == "finetuned"), None)
    cut = next((r for r in rows if r.role == "finetuned-cut" and r.ndcg is not None), None)  # index.dims: the same model
    others = [r for r in rows if r.role not in ("finetuned", "finetuned-cut") and r.ndcg is not None]
    if ft is None or ft.ndcg is None or not others:
        return "No search verdict: the index stage has no fine-tuned row or nothing to compare it with."
    parts = []
    for o in others:
        assert o.ndcg is not None
        diff = 100 * (ft.ndcg - o.ndcg)
        gap = f"{ft.ndcg:.3f} vs {o.ndcg:.3f}, {_pts(ft.ndcg - o.ndcg)} points"
        if ft.ndcg == o.ndcg:
            parts.append(f"did NOT beat {o.name} (tied at {ft.ndcg:.3f})")
        elif abs(diff) < 1:
            word = "only tied" if diff > 0 else "did NOT beat"
            parts.append(f"{word} {o.name} ({gap}, within noise)")
        else:
            parts.append(f"{'beat' if diff > 0 else 'did NOT beat'} {o.name} ({gap})")
    head = f"Search (nDCG@10 over {queries} queries, {documents} documents): the fine-tuned model's index " + " and ".join(parts)
    if cut is not None and cut.ndcg is not None and ft.ndcg:
        head += f". Its {cut.name.removeprefix('fine-tuned, ')} keep {cut.ndcg / ft.ndcg:.1%} of its nDCG@10"
    best = next(r for r in rows if r.role != "finetuned-cut")
    if best.role != "finetuned":
        name = best.name[:1].upper() + best.name[1:]  # it starts a sentence
        return f"{head}. {name} is the best retriever here; search with it, not with the fine-tuned model."
    return f"{head}."


def adapt_verdict(primary: str, tests: dict[str, Any], spread: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    """Did the domain stage pay off: the adapted-then-fine-tuned encoder vs the start model fine-tuned the same way,
    over the same seeds when there are several (ranges compared), else from one seed with a 2-point noise band."""
    a, b = (tests.get("fine-tuned fp32") or {}).get(primary), (tests.get(BASE) or {}).get(primary)
    if a is None or b is None:
        return "No verdict on the domain stage: the run has no test metric for both models."
    if spread and base and spread.get("std") is not None and base.get("std") is not None:
        n = len(base["values"])
        head = (
            f"test {primary} over {n} seeds: adapted {spread['mean']:.3f} (range {spread['min']:.3f}-{spread['max']:.3f}) vs "
            f"not adapted {base['mean']:.3f} (range {base['min']:.3f}-{base['max']:.3f}), "
            f"{_pts(spread['mean'] - base['mean'])} points on the mean"
        )
        if spread["min"] > base["max"]:
            return f"The domain stage (adapt) paid off on every seed: {head}."
        if spread["max"] < base["min"]:
            return f"The domain stage (adapt) HURT on every seed: {head}; fine-tune the start model directly (adapt: false)."
        return f"The domain stage (adapt) made no clear difference: {head}; the seed ranges overlap, so it cost time for nothing measurable."
    diff = 100 * (a - b)
    head = f"test {primary}: adapted {a:.3f} vs not adapted {b:.3f} ({diff:+.1f} points, one seed)"
    if abs(diff) < 2:
        return f"The domain stage (adapt) made no clear difference: {head}; rerun with evaluate.extra_seeds to tell."
    return f"The domain stage (adapt) {'paid off' if diff > 0 else 'HURT'}: {head}."


def verdict(primary: str, tests: dict[str, Any], spread: dict[str, Any] | None = None) -> str:
    """A plain-language answer: did the fine-tuned encoder beat TF-IDF, and by how much. With a seed spread (the
    evaluate stage's extra_seeds) the answer compares the baseline with the encoder's range over seeds; from one
    seed, a gap under 2 points is called within noise."""
    enc = (tests.get("fine-tuned fp32") or {}).get(primary)
    base = (tests.get(BASELINE) or {}).get(primary)
    if enc is None or base is None:
        return "No verdict: the run has no test metric for both the encoder and the TF-IDF baseline."
    if spread and spread.get("std") is not None:
        n, lo, hi, mean, std = len(spread["values"]), spread["min"], spread["max"], spread["mean"], spread["std"]
        head = (
            f"test {primary} over {n} seeds: fine-tuned encoder {mean:.3f} +- {std:.3f} (range {lo:.3f}-{hi:.3f}) vs "
            f"TF-IDF + logistic regression {base:.3f} ({_pts(mean - base)} points on the mean)"
        )
        if lo > base:
            return f"The fine-tuned encoder beat the TF-IDF baseline on every seed: {head}."
        if hi < base:
            return f"The fine-tuned encoder did NOT beat the TF-IDF baseline on any seed: {head}; TF-IDF is also far faster."
        return f"No clear winner: {head}; the baseline lies inside the encoder's seed range."
    diff = 100 * (enc - base)
    head = f"test {primary}: fine-tuned encoder {enc:.3f} vs TF-IDF + logistic regression {base:.3f} ({diff:+.1f} points)"
    if abs(diff) < 2:
        return (
            f"No clear winner: {head}, within what a single seed and this test set can tell apart; rerun with "
            "other seeds (finetune.train.seed) before deciding."
        )
    if diff > 0:
        return f"The fine-tuned encoder beat the TF-IDF baseline: {head}, from a single seed."
    return f"The fine-tuned encoder did NOT beat the TF-IDF baseline: {head}; TF-IDF is also far faster here."


def _pts(x: float) -> str:
    """A difference of two metrics in points, signed; never "-0.0"."""
    return f"{round(100 * x, 1) + 0.0:+.1f}"


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table_text(s: Summary) -> str:
    """The one-screen table the CLI prints."""
    w = max([24, *(len(r.model) for r in s.rows)])
    head = f"{'model':<{w}} {s.primary:>9} {'MB':>7} {'texts/s':>9} {'p95 ms':>8} {'vs TF-IDF':>10}"
    lines = [head, "-" * len(head)]
    for r in s.rows:
        vs = "-" if r.vs_baseline is None else f"{r.vs_baseline:+.1f} pts"
        lines.append(
            f"{r.model:<{w}} {fmt(r.metric, '.3f'):>9} {fmt(r.mb, '.1f'):>7} {fmt(r.texts_per_s, ',.0f'):>9} "
            f"{fmt(r.p95_ms, '.1f'):>8} {vs:>10}"
        )
    return "\n".join([*lines, s.verdict, *([s.domain] if s.domain else []), *search_text(s.search)])


def search_text(s: SearchSummary | None) -> list[str]:
    """The index stage's table and verdict under the model table (nothing when the stage did not run)."""
    if s is None:
        return []
    w = max([24, *(len(r.name) for r in s.rows)])
    head = f"{'retriever':<{w}} {'nDCG@10':>8} {'MRR@10':>8} {'R@10':>7} {'p50 ms':>8} {'p99 ms':>8}"
    lines = ["", f"search: {s.corpus}, {s.documents} documents, {s.queries} queries; index {s.kind}, {fmt(s.mb, '.1f')} MB"]
    lines += [head, "-" * len(head)]
    for r in s.rows:
        lines.append(
            f"{r.name:<{w}} {fmt(r.ndcg, '.3f'):>8} {fmt(r.mrr, '.3f'):>8} {fmt(r.recall, '.3f'):>7} "
            f"{fmt(r.p50_ms, '.1f'):>8} {fmt(r.p99_ms, '.1f'):>8}"
        )
    return [*lines, s.verdict]
