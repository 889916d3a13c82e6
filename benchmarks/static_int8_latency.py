"""Single-text latency and batch throughput of a compress run's dynamic vs static int8 files in our engine, interleaved.

    python benchmarks/static_int8_latency.py runs/vader13/int8 runs/data/vader-cv/fold0/test.jsonl --threads 2

RUN is a `compress` output with a dynamic int8 step (model-int8.safetensors) and a static one
(model-static-int8.safetensors); TEXTS a JSONL with a "text" field. Prints p50 ms of one text per call (48 texts x
3 rounds) and texts/s of one 512-text call (3 rounds), medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

from encoderforge.compression.int8_store import load_int8
from encoderforge.hardware.cpu import cpu_info
from encoderforge.inference.engine import Engine
from encoderforge.tokenization import load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("texts", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(a.threads)
    files = {
        "dynamic": next(a.run.glob("*/model-int8.safetensors")),
        "static": next(a.run.glob("*/model-static-int8.safetensors")),
    }
    tok = load_tokenizer(files["dynamic"].parent / "model")
    texts = [json.loads(x)["text"] for x in a.texts.read_text(encoding="utf-8").splitlines() if x.strip()]
    engines = {k: Engine(load_int8(f), tok, pack=False, max_length=a.max_length) for k, f in files.items()}
    for e in engines.values():
        e.embed(texts[:8])
    single: dict[str, list[float]] = {k: [] for k in engines}
    batch: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(3):
        for x in texts[:48]:
            for k, e in engines.items():
                t = time.perf_counter()
                e.embed([x])
                single[k].append(time.perf_counter() - t)
        for k, e in engines.items():
            t = time.perf_counter()
            e.embed(texts[:512])
            batch[k].append(time.perf_counter() - t)
    print(f"{cpu_info().describe()}; {a.threads} threads")
    for k in engines:
        n = min(512, len(texts))
        print(
            f"{k}: p50 {statistics.median(single[k]) * 1e3:.2f} ms one text; {n / statistics.median(batch[k]):.1f} texts/s ({n} per call)"
        )


if __name__ == "__main__":
    main()
