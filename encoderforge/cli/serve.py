"""`encoderforge serve`: a thin command over encoderforge.serving."""

from __future__ import annotations

from pathlib import Path

import typer

from encoderforge.cli.common import PrecisionOpt, fail_on_error


def serve(
    model: str = typer.Argument(..., help="Run directory (fine-tuned or pipeline run), checkpoint directory or zoo name."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; anything but loopback should have an API key."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, help="Processes (each loads the model; a dead one is restarted)."),
    api_key_file: Path = typer.Option(None, help="File holding the bearer key (else $ENCODERFORGE_API_KEY; else none)."),
    threads: int = typer.Option(0, help="Torch threads per worker (default: cores / workers)."),
    max_batch_tokens: int = typer.Option(8192, help="Token budget of one batched forward pass."),
    max_wait_ms: float = typer.Option(0.0, help="Extra wait for more requests when the queue is empty (0: none)."),
    max_queue: int = typer.Option(256, help="Requests waiting at most; beyond it 429 with Retry-After."),
    max_items: int = typer.Option(2048, help="Inputs per request at most (413 beyond)."),
    max_chars: int = typer.Option(20000, help="Characters per text (cut, or 413 with truncate=false)."),
    timeout_s: float = typer.Option(30.0, help="A request unanswered after this gets 503."),
    index: Path = typer.Option(
        None, help="Index directory (`encoderforge index build`, dense with this model, or bm25) served at /v1/search."
    ),
    precision: PrecisionOpt = typer.Option(
        PrecisionOpt.fp32, help="bf16 GEMMs need AVX512-BF16 or AMX and pass a fidelity gate; auto: bf16 only where faster."
    ),
) -> None:
    """Serve a model over HTTP: /v1/embeddings (OpenAI shape), /v1/classify, /v1/ner, /v1/rerank, /v1/search (with
    --index), /health, /ready, /metrics; docs at /docs."""
    from encoderforge.serving.guard import Limits
    from encoderforge.serving.server import serve as run_server

    with fail_on_error():
        limits = Limits(
            max_items=max_items, max_chars=max_chars, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms,
            max_queue=max_queue, timeout_s=timeout_s,
        )  # fmt: skip
        typer.echo(f"serving {model} on http://{host}:{port} (docs: /docs, workers: {workers})", err=True)
        run_server(model, host=host, port=port, workers=workers, key_file=str(api_key_file) if api_key_file else None,
                   limits=limits, threads=threads, index=str(index) if index else None, precision=precision.value)  # fmt: skip


def bench_serve(
    model: str = typer.Option("minilm-l6", help="Model directory or zoo name (embeddings), served by every server."),
    concurrency: str = typer.Option("1,8,32,64", help="Concurrent clients, comma-separated."),
    requests: int = typer.Option(400, help="Requests per pass."),
    rounds: int = typer.Option(3, help="Interleaved rounds (medians are reported)."),
    threads: int = typer.Option(2, help="Torch threads of every server."),
    texts_per_request: int = typer.Option(1, help="Short texts per request."),
    infinity: Path = typer.Option(None, help="The infinity_emb executable (else $ENCODERFORGE_INFINITY or PATH)."),
    out: Path = typer.Option(Path("runs/bench-serve"), help="Directory for results.json, table.md, serve.png."),
) -> None:
    """Our server vs FastAPI + sentence-transformers (one encode per request) vs infinity-emb, on loopback."""
    from encoderforge import EncoderforgeError
    from encoderforge.serving.bench import bench_serve as run

    with fail_on_error():
        try:
            levels = tuple(int(x) for x in concurrency.split(",") if x.strip())
        except ValueError:
            raise EncoderforgeError(f"--concurrency {concurrency!r}: give comma-separated integers, e.g. 1,8,32,64") from None
        res = run(model, out, concurrency=levels, requests=requests, rounds=rounds, threads=threads,
                  texts_per_request=texts_per_request, infinity=str(infinity) if infinity else None)  # fmt: skip
    typer.echo((out / "table.md").read_text(encoding="utf-8"))
    typer.echo(f"wrote {out}/results.json, table.md, serve.png" + (f"; notes: {res['notes']}" if res["notes"] else ""))
