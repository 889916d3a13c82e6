"""The compression report: every model of a compression run (the dense teacher, each step) and the anchors users
would otherwise ship (transformers fp32 in arrival order, ONNX Runtime fp32 and dynamic int8 of the dense teacher),
measured in ONE run: test metric, size on disk, parameters and non-zeros, single-text latency p50/p95, and
throughput as the median of interleaved rounds. Every model predicts through the same task code
(TASKS[kind].predict over a HiddenStates), so only the encoder differs between rows.

Writes report/results.json, report/table.md and report/pareto.png (metric vs throughput, marker area = MB).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import torch
from torch import nn

from encoderforge import require
from encoderforge.compression.recipe import Bench
from encoderforge.eval.score import predicted_labels, score
from encoderforge.fileio import atomic_file
from encoderforge.hardware.cpu import cpu_info
from encoderforge.inference.engine import Engine
from encoderforge.model import checkpoint
from encoderforge.model.encoder import Encoder
from encoderforge.recipes.compress_teacher import TeacherRun, student_encoder
from encoderforge.tasks.spec import HiddenStates

DENSE = "dense fine-tuned (encoderforge fp32)"
HF_ANCHOR = "transformers fp32 (arrival order)"


@dataclass
class Model:
    """One row of the report: how to run it and what it weighs."""

    name: str
    states: HiddenStates
    head: nn.Module
    disk_bytes: int
    params: int
    nonzero: int
    kind: str  # dense | step | anchor
    row: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # task.json: a step's own (re-tuned multi-label thresholds)


def weights_count(enc: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of an encoder."""
    ps = list(enc.parameters())
    return sum(p.numel() for p in ps), sum(int(torch.count_nonzero(p)) for p in ps)


def _engine(enc: Encoder, t: TeacherRun, **kw: Any) -> Engine:
    return Engine(enc, t.tokenizer, max_length=t.meta["max_length"], **kw)


def _head(run: Path, t: TeacherRun) -> nn.Module:
    loaded = checkpoint.load(run / "model")
    state = {k[len("head.") :]: v for k, v in loaded.extra.items() if k.startswith("head.")}
    return t.spec.load_head(loaded.encoder.cfg, t.meta, state)


def step_model(t: TeacherRun, d: Path, threads: int) -> Model:
    """A step directory as a runnable model, through the loader its artefact needs."""
    info = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    enc = checkpoint.load(d / "model").encoder
    params, nonzero = weights_count(enc)
    disk = (d / "model" / "model.safetensors").stat().st_size
    states: HiddenStates
    q = info.get("quantize")
    if q in ("int8", "static_int8") and info["artefact"].endswith(".safetensors"):  # dynamic or static, our engine
        from encoderforge.compression.int8_store import load_int8

        states = _engine(load_int8(d / info["artefact"]), t, pack=False)  # the int8 model read from what is on disk
        disk = (d / info["artefact"]).stat().st_size
    elif q == "int8":  # a run made before the int8 file format: re-quantized from the fp32 model, as it was measured
        from encoderforge.compression.quantize import quantize_dynamic

        states = _engine(cast(Encoder, quantize_dynamic(enc)), t, pack=False)
        disk = (d / info["artefact"]).stat().st_size
    elif q == "int4":
        from encoderforge.compression.int4 import load_int4

        states = _engine(load_int4(d / info["artefact"]), t)
        disk = (d / info["artefact"]).stat().st_size
    elif q == "static_int8":
        from encoderforge.inference.hidden_states import OnnxStates

        states = OnnxStates(d / info["artefact"], t.tokenizer, max_length=t.meta["max_length"], threads=threads)
        disk = (d / info["artefact"]).stat().st_size
    else:
        states = _engine(enc, t)
        if (d / "model-sparse").is_dir():  # an unstructured step stores its zeros compactly (compression/sparse_io.py)
            disk = sum(f.stat().st_size for f in (d / "model-sparse").iterdir())
    meta = json.loads((d / "task.json").read_text(encoding="utf-8"))
    return Model(step_label(d.name, info), states, _head(d, t), disk, params, nonzero, "step", {"step": info}, meta)


def step_label(name: str, info: dict[str, Any]) -> str:
    """The report's name for a step: its directory, and for a quantize step what it made ("03-quantize (static int8,
    our engine)"), so several quantize steps of one recipe read apart in the table and the plot."""
    q, runtime = info.get("quantize"), info.get("runtime", "onnx")
    what = {
        "int8": "dynamic int8",
        "static_int8": "static int8, our engine" if runtime == "engine" else "static int8, ONNX Runtime",
        "int4": "int4 weights",
    }.get(str(q))
    return f"{name} ({what})" if what else name


def anchors(t: TeacherRun, work: Path, threads: int) -> list[Model]:
    """transformers fp32 and ONNX Runtime fp32 / dynamic int8 of the dense teacher (exported once into `work`)."""
    from encoderforge.inference.hidden_states import OnnxStates, TransformersStates
    from encoderforge.inference.onnx_export import export_onnx

    enc = checkpoint.load(t.run / "model").encoder
    params, nonzero = weights_count(enc)
    head = _head(t.run, t)
    hf_dir = work / "teacher-hf"
    if not (hf_dir / "config.json").is_file():
        checkpoint.export_hf(enc, hf_dir, tokenizer_dir=t.run / "model")
    out = [
        Model(
            HF_ANCHOR,
            TransformersStates(hf_dir, t.tokenizer, max_length=t.meta["max_length"]),
            head,
            (hf_dir / "model.safetensors").stat().st_size,
            params,
            nonzero,
            "anchor",
        )
    ]
    for kind, int8 in (("fp32", False), ("int8", True)):
        path = work / f"teacher-{kind}.onnx"
        if not path.is_file():
            export_onnx(enc, path, pooling="none", int8=int8)
        states = OnnxStates(path, t.tokenizer, max_length=t.meta["max_length"], threads=threads)
        out.append(Model(f"onnxruntime {kind} (sorted)", states, head, path.stat().st_size, params, nonzero, "anchor"))
    return out


def latency_probe(t: TeacherRun, n: int = 32, rounds: int = 5) -> Callable[[nn.Module], float]:
    """measure(task model) -> median milliseconds to encode `n` dev texts through our Engine (the structured step's
    latency-target mode prunes until this is under its target)."""
    texts = [ex.texts[0] for ex in t.dev.examples[:n]]

    def measure(net: nn.Module) -> float:
        enc = student_encoder(net) if hasattr(net, "encoder") else cast(Encoder, net)
        eng = _engine(copy.deepcopy(enc).eval(), t)
        eng.embed(texts)  # warm-up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            eng.embed(texts)
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    return measure


def bench_models(t: TeacherRun, steps: Sequence[Path], cfg: Bench, out: Path) -> dict[str, Any]:
    """Measure the dense teacher, every step and (cfg.anchors) the anchors; write the report files to `out`."""
    torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    dense_enc = checkpoint.load(t.run / "model").encoder
    params, nonzero = weights_count(dense_enc)
    models = [
        Model(
            DENSE,
            _engine(dense_enc, t),
            _head(t.run, t),
            (t.run / "model" / "model.safetensors").stat().st_size,
            params,
            nonzero,
            "dense",
        )
    ]
    models += [step_model(t, d, cfg.threads) for d in steps]
    if cfg.anchors:
        models += anchors(t, out, cfg.threads)
    test = t.test if t.test is not None else t.dev  # no test split: scored on dev (where steps were selected: optimistic)
    texts = [" \t ".join(ex.texts) if len(ex.texts) > 1 else ex.texts[0] for ex in test.examples]
    gold = [ex.label for ex in test.examples]
    predict = t.spec.predict
    for m in models:  # the full test split once (also the warm-up)
        m.meta = m.meta or t.meta
        preds = predict(m.states, m.head, m.meta, texts)
        m.row["metrics"] = score(t.cfg.task, gold, predicted_labels(t.cfg.task, preds), t.labels)
    bench_texts = texts[: cfg.texts]
    times: dict[str, list[float]] = {m.name: [] for m in models}
    for _ in range(cfg.rounds):  # interleaved: machine noise hits every model alike
        for m in models:
            t0 = time.perf_counter()
            predict(m.states, m.head, m.meta, bench_texts)
            times[m.name].append(time.perf_counter() - t0)
    lat: dict[str, list[float]] = {m.name: [] for m in models}
    for text in texts[: cfg.latency_texts]:
        for m in models:
            t0 = time.perf_counter()
            predict(m.states, m.head, m.meta, [text])
            lat[m.name].append(1000 * (time.perf_counter() - t0))
    return write_report(t, models, times, lat, len(bench_texts), cfg, out, "test" if t.test is not None else "dev")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def write_report(
    t: TeacherRun,
    models: list[Model],
    times: dict[str, list[float]],
    lat: dict[str, list[float]],
    n: int,
    cfg: Bench,
    out: Path,
    split: str = "test",
) -> dict[str, Any]:
    primary = t.spec.primary
    dense = models[0]
    base_metric = dense.row["metrics"][primary]
    anchor_tps = {m.name: n / statistics.median(times[m.name]) for m in models}
    rows = []
    for m in models:
        tps = anchor_tps[m.name]
        value = m.row["metrics"][primary]
        rows.append(
            {
                "model": m.name,
                "kind": m.kind,
                "params": m.params,
                "nonzero": m.nonzero,
                "mb": round(m.disk_bytes / 2**20, 2),
                "p50_ms": round(statistics.median(lat[m.name]), 2),
                "p95_ms": round(_pct(lat[m.name], 0.95), 2),
                "texts_per_s": round(tps, 1),
                primary: round(value, 4),
                "delta_rel_pct": round(100 * (value - base_metric) / max(abs(base_metric), 1e-12), 2),
                "x_dense": round(tps / anchor_tps[DENSE], 2),
                **({"x_transformers": round(tps / anchor_tps[HF_ANCHOR], 2)} if HF_ANCHOR in anchor_tps else {}),
                "metrics": m.row["metrics"],
                **({"step": m.row["step"]} if "step" in m.row else {}),
            }
        )
    result = {
        "primary": primary,
        "split": split,
        "texts": n,
        "rounds": cfg.rounds,
        "threads": cfg.threads,
        "cpu_flags": list(cpu_info().flags),
        "rows": rows,
    }
    with atomic_file(out / "results.json") as f:
        json.dump(result, f, indent=2)
    with atomic_file(out / "table.md") as f:
        f.write(to_markdown(result))
    plot_pareto(result, out / "pareto.png")
    return result


def to_markdown(result: dict[str, Any]) -> str:
    p = result["primary"]
    head = f"| model | params | non-zero | MB | p50 ms | p95 ms | texts/s | x dense | x transformers | {p} | rel. delta % |"
    lines = [head, "|" + "---|" * 11]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['nonzero']:,} | {r['mb']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['texts_per_s']} | {r['x_dense']} | {r.get('x_transformers', '')} | {r[p]} | {r['delta_rel_pct']} |"
        )
    flags = ", ".join(result["cpu_flags"]) or "none of avx2/avx512/vnni/amx"
    lines.append(
        f"\nmetric on the {result.get('split', 'test')} split; {result['texts']} test texts per round, median of {result['rounds']} interleaved rounds, {result['threads']} threads; CPU flags: {flags}."
    )
    return "\n".join(lines) + "\n"


def plot_pareto(result: dict[str, Any], path: Path) -> None:
    """Metric vs throughput, marker area proportional to MB on disk, the Pareto front (higher both) drawn."""
    require("matplotlib", "demo").use("Agg")  # before pyplot is imported: no display needed
    plt = require("matplotlib.pyplot", "demo")
    p = result["primary"]
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = {"dense": "tab:blue", "step": "tab:green", "anchor": "tab:grey"}
    span = max(r["texts_per_s"] for r in rows) - min(r["texts_per_s"] for r in rows) or 1.0
    placed: list[tuple[float, float]] = []
    for r in sorted(rows, key=lambda r: (-r[p], r["texts_per_s"])):
        x, y = r["texts_per_s"], r[p]
        ax.scatter(x, y, s=20 + 4 * r["mb"], color=colours[r["kind"]], alpha=0.7, edgecolors="black")
        # models of equal metric and near-equal speed (e.g. the dense model and its fp32 anchors) would print their
        # labels over each other: each further one in such a cluster goes one line lower
        near = sum(1 for px, py in placed if py == y and abs(px - x) < 0.15 * span)
        placed.append((x, y))
        ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(6, 4 - 11 * near), fontsize=8)
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: -r["texts_per_s"]):
        if r[p] > best:
            front.append(r)
            best = r[p]
    ax.plot(
        [r["texts_per_s"] for r in front], [r[p] for r in front], "--o", color="tab:red", label="Pareto front", mfc="none", ms=14
    )
    ax.set_xlabel(f"test texts / s ({result['threads']} threads, median of {result['rounds']} rounds)")
    ax.set_ylabel(f"{result.get('split', 'test')} {p}")
    ax.set_title("Compression: quality vs speed (marker area = MB on disk)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
