"""One self-contained HTML report of a run (jinja2 + matplotlib figures inlined as base64 PNG, no network).

Every number comes from the run's metrics files (summary.py reads them); nothing is recomputed here.
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from encoderforge import EncoderforgeError, require
from encoderforge.fileio import atomic_file
from encoderforge.hardware.cpu import cpu_info
from encoderforge.pipeline.config import STAGES
from encoderforge.pipeline.summary import ANCHOR, BASELINE, Summary, read, summarize

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
 body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 24px auto;
        padding: 0 20px; color: #1f2328; }
 h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #d0d7de; }
 table { border-collapse: collapse; margin: 8px 0 16px; } th, td { padding: 5px 12px; border-bottom: 1px solid #e5e7eb; }
 th { background: #f6f8fa; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
 .verdict { font-size: 17px; padding: 12px 16px; background: #eef6ff; border-left: 4px solid #0969da; }
 .figs { display: flex; flex-wrap: wrap; gap: 16px; } figure { margin: 0; max-width: 522px; } img { max-width: 520px; border: 1px solid #e5e7eb; }
 figcaption { font-size: 13px; color: #57606a; } code, pre { background: #f6f8fa; padding: 2px 6px; }
 pre { padding: 10px; overflow-x: auto; } .muted { color: #57606a; font-size: 13px; }
</style></head><body>
<h1>{{ title }}</h1>
<p class="muted">run directory <code>{{ run }}</code></p>
<p class="verdict" id="verdict">{{ summary.verdict }}</p>
{% if summary.domain %}<p class="verdict" id="verdict-domain">{{ summary.domain }}</p>{% endif %}
<h2>Models</h2>
<table id="models"><tr><th>model</th><th>test {{ summary.primary }}</th><th>MB on disk</th><th>texts/s</th>
<th>p50 ms</th><th>p95 ms</th><th>vs TF-IDF</th></tr>
{% for r in summary.rows %}<tr><td>{{ r.model }}</td><td class="num">{{ f(r.metric, '.3f') }}</td>
<td class="num">{{ f(r.mb, '.1f') }}</td><td class="num">{{ f(r.texts_per_s, ',.0f') }}</td>
<td class="num">{{ f(r.p50_ms, '.1f') }}</td><td class="num">{{ f(r.p95_ms, '.1f') }}</td>
<td class="num">{{ '-' if r.vs_baseline is none else '%+.1f pts' % r.vs_baseline }}</td></tr>{% endfor %}
</table>
<p class="muted">MB: fp32 = the safetensors file; int8 = 1 byte per Linear weight + fp32 scales, embeddings and norms
(torch's packed int8 weights are rebuilt at load). TF-IDF texts/s = vectorizing only. Speed: {{ bench_note }}</p>
{% if summary.search %}{% set search = summary.search %}<h2>Search</h2>
<p class="verdict" id="verdict-search">{{ search.verdict }}</p>
<table id="search"><tr><th>retriever</th><th>nDCG@10</th><th>MRR@10</th><th>Recall@10</th><th>p50 ms</th>
<th>p99 ms</th></tr>
{% for r in search.rows %}<tr><td>{{ r.name }}</td><td class="num">{{ f(r.ndcg, '.3f') }}</td>
<td class="num">{{ f(r.mrr, '.3f') }}</td><td class="num">{{ f(r.recall, '.3f') }}</td>
<td class="num">{{ f(r.p50_ms, '.1f') }}</td><td class="num">{{ f(r.p99_ms, '.1f') }}</td></tr>{% endfor %}</table>
<p class="muted">Corpus: {{ search.corpus }}, {{ f(search.documents, ',') }} documents; {{ f(search.queries, ',') }} judged queries;
the fine-tuned model searches its faiss index ({{ search.kind }}, {{ f(search.mb, '.1f') }} MB on disk, RUN/index/dense)
{%- for r in search.rows if r.role == 'base' %}, the base model the same corpus exactly{% endfor %}
{%- for r in search.rows if r.role == 'bm25' %}, BM25 whole texts{% endfor %}. Latency = one query at a time
(embedding + search). Every number is the stage's eval-retrieval runs (RUN/index/eval/).</p>{% endif %}
{% if compression %}<h2>Compression</h2>
<table id="compression"><tr><th>model</th><th>params</th><th>non-zero</th><th>MB</th><th>p50 ms</th><th>p95 ms</th>
<th>texts/s</th><th>x dense</th><th>test {{ compression.primary }}</th><th>relative change</th></tr>
{% for r in compression.rows %}<tr><td>{{ r.model }}</td><td class="num">{{ f(r.params, ',') }}</td>
<td class="num">{{ f(r.nonzero, ',') }}</td><td class="num">{{ f(r.mb, '.1f') }}</td><td class="num">{{ f(r.p50_ms, '.1f') }}</td>
<td class="num">{{ f(r.p95_ms, '.1f') }}</td><td class="num">{{ f(r.texts_per_s, ',.0f') }}</td>
<td class="num">{{ f(r.x_dense, '.2f') }}x</td><td class="num">{{ f(r[compression.primary], '.4f') }}</td>
<td class="num">{{ '%+.2f%%' % r.delta_rel_pct }}</td></tr>{% endfor %}</table>
<p class="muted">The compression recipe's own measurement (RUN/compress/recipe/report): every model in one run,
{{ compression.texts }} test texts per round, medians of {{ compression.rounds }} interleaved rounds,
{{ compression.threads }} threads; CPU flags {{ compression.cpu_flags|join(', ') }}.</p>{% endif %}
{% if figures %}<h2>Figures</h2><div class="figs">
{% for fig in figures %}<figure id="fig-{{ fig.id }}"><img alt="{{ fig.caption }}" src="data:image/png;base64,{{ fig.png }}">
<figcaption>{{ fig.caption }}</figcaption></figure>{% endfor %}</div>{% endif %}
{% if per_label %}<h2>Per-label F1 (test)</h2>
<table id="per-label"><tr><th>label</th>{% for m in per_label.models %}<th>{{ m }}</th>{% endfor %}</tr>
{% for lab in per_label.labels %}<tr><td>{{ lab }}</td>{% for m in per_label.models %}
<td class="num">{{ f(per_label.f1[m].get(lab), '.3f') }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
{% if tok %}<h2>Tokenizer on the training text</h2>
<table id="tokenizer"><tr><th>tokenizer</th><th>vocab</th><th>tokens</th><th>tokens/word</th><th>unknown rate</th>
<th>words split &gt;1 piece</th></tr>{% for t in tok.tokenizers %}<tr><td>{{ t.name }}</td>
<td class="num">{{ f(t.vocab_size, ',') }}</td><td class="num">{{ f(t.tokens, ',') }}</td>
<td class="num">{{ f(t.tokens_per_word, '.3f') }}</td><td class="num">{{ f(100 * t.unknown_rate, '.2f') }}%</td>
<td class="num">{{ f(100 * t.split_rate, '.1f') }}%</td></tr>{% endfor %}</table>
<p class="muted">{{ f(tok.texts, ',') }} training texts, {{ f(tok.words, ',') }} words.</p>{% endif %}
{% if adapt %}<h2>Domain adaptation (continued MLM)</h2>
<table id="adapt"><tr><th>encoder</th><th>steps</th><th>held-out MLM loss</th><th>MLM accuracy</th><th>perplexity</th></tr>
{% for name, key in [('start model, MLM head trained on frozen encoder', 'unadapted'), ('adapted (whole encoder)', 'adapted')] %}
{% set m = adapt[key] %}<tr><td>{{ name }}</td><td class="num">{{ m.step }}</td><td class="num">{{ f(m.eval_mlm_loss, '.3f') }}</td>
<td class="num">{{ f(100 * m.eval_mlm_accuracy, '.1f') }}%</td><td class="num">{{ f(m.eval_perplexity, ',.1f') }}</td></tr>{% endfor %}</table>
<p class="muted">Domain text: {{ adapt.text }}, {{ f(adapt_docs, ',') }} documents, {{ f(adapt_tokens, ',') }} training tokens;
the same held-out rows and masks for both. Whether adaptation paid off downstream is the second verdict above (the
start model fine-tuned the same way, with the same seeds).</p>{% endif %}
{% if data %}<h2>Data</h2><table id="data"><tr><th>split</th><th>examples</th><th>labels</th></tr>
{% for name, s in data.splits.items() %}<tr><td>{{ name }}</td><td class="num">{{ s.examples }}</td>
<td>{{ s.labels.items()|map('join', ': ')|join(', ') }}</td></tr>{% endfor %}</table>
<p class="muted">{{ data.package }}; {{ data.available }} deduplicated snippets available.</p>{% endif %}
<h2>Stages</h2><table id="stages"><tr><th>stage</th><th>status</th><th>seconds</th><th>content hash</th></tr>
{% for s in stages %}<tr><td>{{ s.name }}</td><td>{{ s.status }}</td><td class="num">{{ s.seconds }}</td>
<td><code>{{ s.hash }}</code></td></tr>{% endfor %}</table>
<h2>Machine</h2><table id="machine">{% for k, v in machine.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Reproduce</h2><pre id="command">{{ command }}</pre>
</body></html>
"""


def machine_facts() -> dict[str, str]:
    """CPU model and SIMD/matrix flags, threads, library versions: printed beside every number."""
    import torch

    info = cpu_info()
    facts = {
        "CPU": info.model,
        "flags": " ".join(info.flags) or "none of avx2/avx512f/avx512_vnni/avx512_bf16/amx",
        "cores visible": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
    }
    for pkg in ("encoderforge", "torch", "transformers", "scikit-learn", "tokenizers"):
        try:
            facts[pkg] = version(pkg)
        except PackageNotFoundError:
            facts[pkg] = "not installed"
    return facts


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def figures(run: Path, summary: Summary) -> list[dict[str, str]]:
    """Training curve, trade-off (metric vs texts/s, marker size = MB) and per-label F1 bars."""
    require("matplotlib", "demo")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[dict[str, str]] = []
    curve = [json.loads(line) for line in _lines(run / "finetune" / "metrics.jsonl")]
    primary = summary.primary
    if curve:
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        loss = [(r["step"], r["loss"]) for r in curve if "loss" in r]
        ev = [(r["step"], r[f"eval_{primary}"]) for r in curve if f"eval_{primary}" in r]
        if loss:
            ax.plot(*zip(*loss), color="#0969da", label="train loss")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        if ev:
            ax2 = ax.twinx()
            ax2.plot(*zip(*ev), "o-", color="#cf222e", label=f"dev {primary}")
            ax2.set_ylabel(f"dev {primary}")
            ax2.set_ylim(0, 1.02)
        handles = [h for a in fig.axes for h in a.get_lines()]
        ax.legend(handles, [str(h.get_label()) for h in handles], loc="center right", fontsize=8)
        ax.set_title("fine-tuning curve")
        out.append(
            {"id": "curve", "caption": "Fine-tuning: train loss and dev metric (RUN/finetune/metrics.jsonl)", "png": _png(fig)}
        )
        plt.close(fig)
    head = [json.loads(line) for line in _lines(run / "adapt" / "head" / "metrics.jsonl")]
    mlm = [json.loads(line) for line in _lines(run / "adapt" / "mlm" / "metrics.jsonl")]
    if mlm:
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        off = max((r["step"] for r in head), default=0)
        for rows, shift, color, label in (
            (head, 0, "#8c959f", "phase 1: head only"),
            (mlm, off, "#0969da", "phase 2: whole encoder"),
        ):
            tr = [(r["step"] + shift, r["loss"]) for r in rows if "loss" in r]
            ev = [(r["step"] + shift, r["eval_mlm_loss"]) for r in rows if "eval_mlm_loss" in r]
            if tr:
                ax.plot(*zip(*tr), color=color, label=f"{label} (train)")
            if ev:
                ax.plot(*zip(*ev), "o", color=color, markeredgecolor="black", label=f"{label} (held-out)")
        ax.set_xlabel("step")
        ax.set_ylabel("MLM loss")
        ax.legend(fontsize=8)
        ax.set_title("domain adaptation: MLM loss")
        out.append(
            {
                "id": "adapt",
                "caption": "Continued MLM on the domain text (RUN/adapt/{head,mlm}/metrics.jsonl); phase 2's train loss includes the anchor term",
                "png": _png(fig),
            }
        )
        plt.close(fig)
    pts = [r for r in summary.rows if r.texts_per_s]
    if pts:
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        enc_metric = next((r.metric for r in summary.rows if r.model == "fine-tuned fp32"), None)
        for r in pts:
            y = r.metric if r.metric is not None else enc_metric  # the anchor runs the same fp32 weights
            if y is None or r.texts_per_s is None:
                continue
            color = {BASELINE: "#8c959f", ANCHOR: "#bf8700", "fine-tuned int8": "#1a7f37"}.get(r.model, "#0969da")
            ax.scatter(r.texts_per_s, y, s=40 + 2 * (r.mb or 10), color=color, alpha=0.75, edgecolor="black", label=r.model)
        ax.legend(fontsize=8, loc="best", markerscale=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("texts/s (log scale)")
        ax.set_ylabel(f"test {primary}")
        ax.set_title("trade-off: quality vs speed (marker size = MB)")
        ax.margins(x=0.35, y=0.2)
        out.append(
            {
                "id": "tradeoff",
                "caption": "Metric vs throughput; the transformers anchor runs the fp32 weights (same metric)",
                "png": _png(fig),
            }
        )
        plt.close(fig)
    pl = per_label(run)
    if pl:
        import numpy as np

        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        width = 0.8 / len(pl["models"])
        x = np.arange(len(pl["labels"]))
        for i, m in enumerate(pl["models"]):
            ax.bar(x + i * width, [pl["f1"][m].get(lab, 0.0) for lab in pl["labels"]], width, label=m)
        ax.set_xticks(x + 0.4 - width / 2, pl["labels"], rotation=20, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("test F1")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(pl["models"]), frameon=False)
        ax.set_title("per-label F1")
        out.append({"id": "per-label", "caption": "Per-label test F1 of each model", "png": _png(fig)})
        plt.close(fig)
    pareto = run / "compress" / "recipe" / "report" / "pareto.png"
    if pareto.is_file():  # drawn by the compression recipe's report, from the same measurement as its table
        png = base64.b64encode(pareto.read_bytes()).decode()
        out.append({"id": "compression", "caption": "Compression: test metric vs texts/s (marker area = MB)", "png": png})
    return out


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return []


def per_label(run: Path) -> dict[str, Any] | None:
    ev = read(run / "evaluate" / "metrics.json")
    f1: dict[str, dict[str, float]] = {}
    for m, t in (ev.get("models") or {}).items():
        if (t or {}).get("per_label_f1"):
            f1[m] = t["per_label_f1"]
    if not f1:
        return None
    return {"models": list(f1), "labels": ev.get("labels") or sorted({lab for v in f1.values() for lab in v}), "f1": f1}


def write_report(run: str | Path) -> Path:
    """Render RUN/report/report.html from the run's metrics files; returns its path.

    Example:
        >>> write_report("runs/legal-quickstart")
    """
    run = Path(run)
    if not (run / "pipeline.json").is_file():
        raise EncoderforgeError(f"{run}: not a pipeline run directory (no pipeline.json); pass the --out of `encoderforge run`")
    jinja2 = require("jinja2", "demo")
    summary = summarize(run)
    pipe = read(run / "pipeline.json")
    bench = read(run / "bench" / "metrics.json")
    adapt = read(run / "adapt" / "metrics.json")
    corpora = (adapt.get("corpus") or {}).get("corpora") or []
    stages = [
        {"name": p.name, **{k: (read(p / "stage.json").get(k, "-")) for k in ("status", "seconds", "hash")}}
        for p in (run / name for name in STAGES)
        if (p / "stage.json").is_file()
    ]
    for s in stages:
        if s["name"] == "report" and s["status"] == "running":
            s["status"] = "this page"  # the report is written from inside its own stage
    env = jinja2.Environment(autoescape=True)
    section = (pipe.get("pipeline") or {}).get("report")
    html = env.from_string(TEMPLATE).render(
        title=section.get("title", "encoderforge run") if isinstance(section, dict) else "encoderforge run",
        run=str(run),
        summary=summary,
        figures=figures(run, summary),
        per_label=per_label(run),
        compression=read(run / "compress" / "recipe" / "report" / "results.json") or None,
        data=read(run / "data" / "metrics.json") or None,
        tok=read(run / "tokenizer" / "metrics.json") or None,
        adapt=adapt if adapt.get("adapted") else None,
        adapt_docs=sum(sum((c.get("documents") or {}).values()) for c in corpora),
        adapt_tokens=sum((c.get("tokens") or {}).get("train", 0) for c in corpora),
        stages=stages,
        machine=machine_facts(),
        command=pipe.get("command") or f"encoderforge run {pipe.get('source')} --out {run}",
        bench_note=(
            f"{bench.get('texts')} test texts, {bench.get('threads')} threads, medians of interleaved rounds; "
            "latency = one text per call"
            if bench
            else "no bench stage in this run"
        ),
        f=lambda v, spec: "-" if v is None else format(v, spec),
    )
    out = run / "report" / "report.html"
    with atomic_file(out, encoding="utf-8") as fh:
        fh.write(html)
    return out
