"""`encoderforge serve`: load the model, build the app, run uvicorn (one process, or N workers under uvicorn's
supervisor, which restarts a worker that dies; /metrics sums every worker's counters)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import cast

from encoderforge import EncoderforgeError, require
from encoderforge.inference.precision import Precision, check_precision
from encoderforge.serving.guard import Limits

ENV = "ENCODERFORGE_SERVE"  # JSON settings handed to worker processes (never the key itself: its file or env name)
KEY_ENV = "ENCODERFORGE_API_KEY"


def read_api_key(key_file: str | Path | None) -> str | None:
    """The bearer key from a file (first line) or ENCODERFORGE_API_KEY; never from a command-line argument."""
    if key_file:
        p = Path(key_file)
        if not p.is_file():
            raise EncoderforgeError(f"--api-key-file {p}: no such file; write the key into it (one line)")
        key = p.read_text(encoding="utf-8").strip()
        if len(key) < 16:
            raise EncoderforgeError(f"--api-key-file {p}: the key must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return key
    key = os.environ.get(KEY_ENV, "").strip()
    if key and len(key) < 16:
        raise EncoderforgeError(f"{KEY_ENV}: the key must be at least 16 characters (e.g. `openssl rand -hex 32`)")
    return key or None


def build(model: str, limits: Limits, key_file: str | None, threads: int, index: str | None = None, precision: str = "fp32"):
    """Load and wire one process's app (each worker calls this, and loads its own read-only copy of the index)."""
    import torch

    from encoderforge.serving.app import create_app
    from encoderforge.serving.model import load_served
    from encoderforge.serving.search import load_search_index

    torch.set_num_threads(max(1, threads))
    served = load_served(model, max_tokens=max(limits.max_batch_tokens, 512), precision=cast(Precision, precision))
    loaded = load_search_index(index, served) if index else None
    return create_app(served, limits, api_key=read_api_key(key_file), index=loaded)


def app_from_env():  # -> FastAPI; uvicorn's factory for worker processes
    cfg = json.loads(os.environ[ENV])
    return build(
        cfg["model"], Limits(**cfg["limits"]), cfg["key_file"], cfg["threads"], cfg.get("index"), cfg.get("precision", "fp32")
    )


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    key_file: str | None = None,
    limits: Limits | None = None,
    threads: int = 0,
    drain_s: float = 10.0,
    index: str | None = None,
    precision: str = "fp32",
) -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight requests (up to `drain_s`).

    Args:
        model: a run directory, pipeline run directory, checkpoint directory or zoo name.
        host: 127.0.0.1 unless told otherwise; another host without an API key gets a warning.
        workers: processes; each loads the model (memory x N) and takes threads = cores / workers by default.
        key_file: file holding the bearer key (else ENCODERFORGE_API_KEY; else no auth).
        index: an index directory (`encoderforge index build`) served at /v1/search; a dense one must have been built
            with `model` (checked: the server refuses to start otherwise).
        precision: the engine's GEMM precision: fp32, or bf16 / auto on CPUs with AVX512-BF16 or AMX (`Engine`).
    """
    require("fastapi", "serve")
    require("uvicorn", "serve")
    require("prometheus_client", "serve")
    import uvicorn

    lim = limits or Limits()
    check_precision(precision)  # a bad value or bf16 on a CPU without it: one line, before anything loads
    if workers < 1:
        raise EncoderforgeError(f"--workers must be >= 1, got {workers}")
    key = read_api_key(key_file)  # fail before loading anything
    if host not in ("127.0.0.1", "localhost", "::1") and key is None:
        print(f"serve: binding {host} without an API key: anyone who reaches this port can use the model; "
              f"pass --api-key-file or set {KEY_ENV}", file=sys.stderr)  # fmt: skip
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        app = build(model, lim, key_file, threads, index, precision)
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(drain_s))
        return
    from encoderforge.serving.model import load_served
    from encoderforge.serving.search import check_index

    served = load_served(model, precision=cast(Precision, precision))  # a bad model path fails here, once, not in N workers
    if index:
        check_index(index, served)  # so does a mismatched or corrupt index (files hashed, not loaded)
    del served
    metrics_dir = tempfile.mkdtemp(prefix="encoderforge-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[ENV] = json.dumps(
        {
            "model": str(model),
            "limits": dataclasses.asdict(lim),
            "key_file": key_file,
            "threads": threads,
            "index": index,
            "precision": precision,
        }
    )
    try:
        uvicorn.run(
            "encoderforge.serving.server:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            timeout_graceful_shutdown=int(drain_s),
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
