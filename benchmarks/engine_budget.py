"""Token-budget sweep of the engine (fp32 and int8) against ONNX Runtime on sorted batches, same texts, one run.

Usage: python benchmarks/engine_budget.py --threads 1 --budgets 1024,2048,4096,8192 --n 1024
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from encoderforge.compression.quantize import quantize_dynamic
from encoderforge.data import datasets
from encoderforge.inference.engine import Engine
from encoderforge.inference.onnx_export import export_onnx, onnx_session, run_onnx
from encoderforge.model.checkpoint import load
from encoderforge.recipes.bench_infer import _padded_batches
from encoderforge.tokenization import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budgets", default="1024,2048,4096,8192")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    texts = datasets.wnut_tweets()[: a.n]
    enc, tok = load("minilm-l6").encoder, load_tokenizer("minilm-l6")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    runs = {}
    tmp = Path(tempfile.mkdtemp())
    for kind, q in (("fp32", False), ("int8", True)):
        sess = onnx_session(export_onnx(enc, tmp / f"{kind}.onnx", pooling="mean", int8=q), threads=a.threads)
        runs[f"onnxruntime {kind} (sorted, batch 32)"] = lambda s=sess: [
            run_onnx(s, i, m) for i, m in _padded_batches(tok, texts, order, 128, 32)
        ]
    int8 = quantize_dynamic(enc)
    for b in map(int, a.budgets.split(",")):
        for kind, model in (("fp32", enc), ("int8", int8)):
            eng = Engine(model, load_tokenizer("minilm-l6"), max_tokens=b, max_length=128)
            runs[f"encoderforge {kind}, budget {b}"] = lambda e=eng: e.embed(texts)
    n_tok = sum(len(s) for s in Engine(enc, tok, max_length=128).tokenize(texts).ids)
    times = {k: [] for k in runs}
    for _ in range(a.repeats):  # interleaved rounds: every runner sees the same machine load
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    print(f"| runner ({len(texts)} WNUT tweets, {n_tok:,} tokens, {a.threads} thread(s)) | real tokens/s |\n|---|---:|")
    for k, v in times.items():
        print(f"| {k} | {n_tok / statistics.median(v):,.0f} |")


if __name__ == "__main__":
    main()
