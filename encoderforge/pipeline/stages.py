"""The pipeline's stages: each a function (config, run directory) -> the dict it records in RUN/<stage>/metrics.json.

Stages read earlier stages' outputs from the run directory only (RUN/finetune/model, RUN/data/*.jsonl), never
from memory, so that any stage can rerun alone after a kill.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from encoderforge import require
from encoderforge.eval.score import predicted_labels, score
from encoderforge.model import checkpoint
from encoderforge.pipeline.config import (
    BenchStage,
    CompressStage,
    EvaluateStage,
    ExportStage,
    PipelineConfig,
    TokenizerStage,
)
from encoderforge.pipeline.summary import BASE, PROBE
from encoderforge.recipes.finetune import finetune
from encoderforge.recipes.finetune_config import FinetuneConfig
from encoderforge.recipes.predict import Predictor


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def read_split(path: str | Path) -> tuple[list[str], list[Any]]:
    """(texts, labels) of a JSONL file written by the data stage or given by the user ({"text", "label"})."""
    texts, labels = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            texts.append(str(obj["text"]))
            labels.append(obj["label"])
    return texts, labels


def run_finetune(cfg: FinetuneConfig, stage_dir: Path, *, overwrite: bool) -> dict[str, Any]:
    """Fine-tune (the recipe resumes a killed run by itself); the recipe's metrics.json is the stage's record."""
    res = finetune(cfg, overwrite=overwrite)
    return {
        "run_dir": str(res.run_dir),
        "primary": res.metrics.get("primary"),
        "test": res.metrics.get("test"),
        "recipe_skipped": res.skipped,
    }


def model_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def int8_bytes(encoder: nn.Module) -> int:
    """Bytes of the int8 model's weights: 1 per Linear weight + an fp32 scale per output row; everything else fp32."""
    total = 0
    for m in encoder.modules():
        for name, p in m.named_parameters(recurse=False):
            total += p.numel() * (1 if isinstance(m, nn.Linear) and name == "weight" else 4)
            if isinstance(m, nn.Linear) and name == "weight":
                total += p.shape[0] * 4
    return total


def int8_predictor(run: Path) -> Predictor:
    """The fine-tuned run with its encoder quantized to int8 (the head stays fp32)."""
    from encoderforge.compression.quantize import quantize_dynamic
    from encoderforge.inference.engine import Engine
    from encoderforge.model.encoder import Encoder
    from encoderforge.tokenization import load_tokenizer

    p = Predictor.load(run)
    q = quantize_dynamic(checkpoint.load(run / "model").encoder)
    engine = Engine(
        q if isinstance(q, Encoder) else p.engine.encoder,
        load_tokenizer(run / "model"),
        max_tokens=p.engine.max_tokens,
        max_length=p.engine.max_length,
        pack=False,
    )
    return Predictor(engine=engine, head=p.head, meta=p.meta)


def run_compress(cfg: CompressStage, ft: FinetuneConfig, run: Path) -> dict[str, Any]:
    """int8 of the fine-tuned encoder: its test metrics through the Engine and its weight bytes."""
    ft_run = run / "finetune"
    texts, gold = read_split(ft.data.test) if ft.data.test else ([], [])
    pred = int8_predictor(ft_run)
    out: dict[str, Any] = {
        "method": cfg.method,
        "bytes_int8_weights": int8_bytes(checkpoint.load(ft_run / "model").encoder),
        "bytes_fp32_file": model_bytes(ft_run / "model"),
    }
    if texts:
        out["test"] = score(ft.task, gold, predicted_labels(ft.task, pred.predict(texts)), pred.meta["labels"])
    if cfg.recipe:  # the recipe's own run directory resumes by itself after a kill
        from encoderforge.compression.recipe import load_recipe
        from encoderforge.recipes.compress import compress

        res = compress(load_recipe(cfg.recipe), run / "compress" / "recipe", teacher=ft_run)
        out["recipe"] = {"file": cfg.recipe, "report": str(res.out / "report" / "results.json")}
    return out


def tfidf_baseline(
    task: str, train: tuple[list[str], list[Any]], test: tuple[list[str], list[Any]], labels: Sequence[str]
) -> dict[str, Any]:
    """TF-IDF (word 1-2 grams) + logistic regression (one-vs-rest for multi-label), scikit-learn defaults otherwise."""
    require("sklearn", "eval")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train, x_test = vec.fit_transform(train[0]), vec.transform(test[0])
    if task == "multilabel":
        mlb = MultiLabelBinarizer(classes=list(labels))
        clf = OneVsRestClassifier(LogisticRegression(max_iter=1000, C=10.0))
        clf.fit(x_train, mlb.fit_transform(train[1]))
        pred = [list(row) for row in mlb.inverse_transform(clf.predict(x_test))]
    else:
        lr = LogisticRegression(max_iter=1000, C=10.0).fit(x_train, train[1])
        pred = list(lr.predict(x_test))
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    vec.transform(test[0])
    return {
        **score(task, test[1], pred, labels),
        "fit_s": round(fit_s, 2),
        "texts_per_s": round(len(test[0]) / max(time.perf_counter() - t1, 1e-9), 1),
    }


def run_evaluate(cfg: EvaluateStage, ft: FinetuneConfig, run: Path, base_model: str | None = None) -> dict[str, Any]:
    """Every produced model's test metrics (read from the stages' metrics files) beside the TF-IDF baseline; with
    `base_model` (the adapt stage ran) also the start model fine-tuned the same way without adaptation."""
    ft_metrics = read_json(run / "finetune" / "metrics.json")
    labels = read_json(run / "finetune" / "task.json")["labels"]
    models: dict[str, Any] = {"fine-tuned fp32": ft_metrics.get("test")}
    if (run / "compress" / "metrics.json").is_file():
        models["fine-tuned int8"] = read_json(run / "compress" / "metrics.json").get("test")
    if (ft_metrics.get("probe") or {}).get("test"):  # fine-tuning's own honest floor, fitted in the same run
        models[PROBE] = ft_metrics["probe"]["test"]
    out: dict[str, Any] = {"task": ft.task, "primary": ft_metrics["primary"], "labels": labels, "models": models}
    if cfg.tfidf and ft.data.test:
        train_file = read_json(run / "finetune" / "config.json")["train_files"]["train"]
        out["models"]["TF-IDF + LR"] = tfidf_baseline(ft.task, read_split(train_file), read_split(ft.data.test), labels)
    primary = ft_metrics["primary"]
    first = {ft.train.seed: (ft_metrics.get("test") or {}).get(primary)}
    if cfg.extra_seeds:
        extra = [s for s in cfg.extra_seeds if s != ft.train.seed]
        out["seed_spread"] = spread(primary, first | again(ft, extra, run / "evaluate", "seed", primary))
    if base_model is not None:
        base = dataclasses.replace(ft, model=base_model)
        tests = again(base, [ft.train.seed, *cfg.extra_seeds], run / "evaluate", "base-seed", primary, full=True)
        out["models"][BASE] = tests.pop("test")
        out["base_spread"] = spread(primary, tests)
    return out


def again(ft: FinetuneConfig, seeds: list[int], where: Path, prefix: str, primary: str, full: bool = False) -> dict[Any, Any]:
    """The fine-tuning recipe once per seed into where/<prefix>-<seed>/ (resumable; a finished one is not retrained):
    {seed: test metric}, and with `full` also {"test": the first seed's whole test metrics}."""
    values: dict[Any, Any] = {}
    for s in dict.fromkeys(seeds):
        cfg = dataclasses.replace(ft, train=dataclasses.replace(ft.train, seed=s, out_dir=str(where / f"{prefix}-{s}")))
        test = finetune(cfg).metrics.get("test") or {}
        if full and "test" not in values:
            values["test"] = test
        values[s] = test.get(primary)
    return values


def spread(primary: str, values: dict[int, float | None]) -> dict[str, Any]:
    """A metric's mean, sample std, min and max over seeds."""
    xs = [v for v in values.values() if v is not None]
    return {
        "primary": primary,
        "values": {str(k): v for k, v in values.items()},
        "mean": float(np.mean(xs)) if xs else None,
        "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else None,
        "min": min(xs) if xs else None,
        "max": max(xs) if xs else None,
    }


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def run_bench(cfg: BenchStage, ft: FinetuneConfig, run: Path) -> dict[str, Any]:
    """p50/p95 single-text latency and batched texts/s of each model on the same test texts, rounds interleaved."""
    from encoderforge.inference.engine import Engine

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        texts = read_split(ft.data.test)[0] if ft.data.test else []
        texts = (texts * (cfg.texts // max(len(texts), 1) + 1))[: cfg.texts]
        model_dir = run / "finetune" / "model"
        meta = read_json(run / "finetune" / "task.json")
        fp32 = Engine.from_pretrained(model_dir, max_length=meta["max_length"])
        int8 = int8_predictor(run / "finetune").engine
        runners: dict[str, Callable[[list[str]], object]] = {
            "fine-tuned fp32": lambda t: fp32.embed(t),
            "fine-tuned int8": lambda t: int8.embed(t),
        }
        with tempfile.TemporaryDirectory() as tmp:
            if cfg.transformers:
                runners["transformers BertModel"] = _transformers_runner(model_dir, Path(tmp), meta["max_length"])
            return _time_runners(runners, texts, cfg) | {"threads": cfg.threads, "texts": len(texts)}
    finally:
        torch.set_num_threads(threads)


def _transformers_runner(model_dir: Path, tmp: Path, max_length: int) -> Callable[[list[str]], object]:
    """The same weights in transformers' BertModel (SDPA), batches of 32 in arrival order, padded, mean pooled."""
    transformers = require("transformers", "hf")
    hf_dir = checkpoint.export_hf(checkpoint.load(model_dir).encoder, tmp / "hf", tokenizer_dir=model_dir)
    transformers.utils.logging.disable_progress_bar()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModel.from_pretrained(hf_dir).eval()

    def run(texts: list[str]) -> object:
        with torch.inference_mode():
            for i in range(0, len(texts), 32):
                enc = tok(texts[i : i + 32], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                h = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1)
                (h * m).sum(1) / m.sum(1)
        return None

    return run


def _time_runners(runners: dict[str, Callable[[list[str]], object]], texts: list[str], cfg: BenchStage) -> dict[str, Any]:
    """Warm up each runner once, then `rounds` interleaved rounds: a batched pass (texts/s) and single texts (latency)."""
    single = texts[: cfg.latency_texts]
    for fn in runners.values():
        fn(texts[:8])
    rates: dict[str, list[float]] = {k: [] for k in runners}
    lat: dict[str, list[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for _ in range(cfg.rounds):
            for name, fn in runners.items():
                t0 = time.perf_counter()
                fn(texts)
                rates[name].append(len(texts) / (time.perf_counter() - t0))
                for t in single:
                    t1 = time.perf_counter()
                    fn([t])
                    lat[name].append((time.perf_counter() - t1) * 1000)
    return {
        "models": {
            k: {
                "texts_per_s": round(statistics.median(rates[k]), 1),
                "p50_ms": round(_percentile(lat[k], 50), 2),
                "p95_ms": round(_percentile(lat[k], 95), 2),
                "rounds": cfg.rounds,
            }
            for k in runners
        }
    }


def run_export(cfg: ExportStage, run: Path, stage_dir: Path) -> dict[str, Any]:
    """The fine-tuned encoder as a transformers.AutoModel directory (and optionally ONNX) under RUN/export/."""
    model_dir = run / "finetune" / "model"
    out: dict[str, Any] = {}
    if cfg.hf:
        path = checkpoint.export_hf(checkpoint.load(model_dir).encoder, stage_dir / "hf", tokenizer_dir=model_dir)
        out["hf"] = {"path": str(path), "bytes": model_bytes(path)}
    if cfg.onnx:
        from encoderforge.inference.onnx_export import export_checkpoint

        rep = export_checkpoint(model_dir, stage_dir / "model.onnx", pooling="mean")
        out["onnx"] = {
            "path": str(rep.path),
            "bytes": rep.size_bytes,
            "max_abs_diff": rep.max_abs_diff,
            "min_cosine": rep.min_cosine,
        }
    return out


def run_tokenizer(cfg: TokenizerStage, ft: FinetuneConfig, base_model: str) -> dict[str, Any]:
    """The start model's tokenizer (and `compare`, if set) on the training texts: tokenization.stats."""
    from encoderforge.model.zoo import resolve_model
    from encoderforge.tokenization.stats import tokenizer_stats

    texts = read_split(ft.data.train)[0][: cfg.max_texts]
    model = resolve_model(base_model)
    rep = tokenizer_stats(
        texts, model, resolve_model(cfg.compare) if cfg.compare else model, names=(base_model, cfg.compare or base_model)
    )
    return {
        "texts": rep.texts,
        "words": rep.words,
        "tokenizers": [vars(rep.a)] + ([vars(rep.b)] if cfg.compare else []),
        "fewer_tokens_pct": rep.fewer_tokens_pct if cfg.compare else None,
    }


def run_stage(name: str, cfg: PipelineConfig, stage_dir: Path, *, overwrite: bool) -> dict[str, Any]:
    """Dispatch one stage by name (report and data are run by the runner itself)."""
    run, ft = cfg.run_dir, cfg.finetune
    assert ft is not None or name == "report"  # load_pipeline checked the dependencies
    if name == "tokenizer":
        return run_tokenizer(cfg.tokenizer, ft, cfg.base_model)  # type: ignore[arg-type]
    if name == "adapt":
        from encoderforge.pipeline.adapt import run_adapt

        return run_adapt(cfg.adapt, cfg.base_model, stage_dir)  # type: ignore[arg-type]
    if name == "finetune":
        return run_finetune(ft, stage_dir, overwrite=overwrite)  # type: ignore[arg-type]
    if name == "compress":
        return run_compress(cfg.compress, ft, run)  # type: ignore[arg-type]
    if name == "evaluate":
        return run_evaluate(cfg.evaluate, ft, run, cfg.base_model if cfg.adapt else None)  # type: ignore[arg-type]
    if name == "bench":
        return run_bench(cfg.bench, ft, run)  # type: ignore[arg-type]
    if name == "export":
        return run_export(cfg.export, run, stage_dir)  # type: ignore[arg-type]
    raise ValueError(name)
