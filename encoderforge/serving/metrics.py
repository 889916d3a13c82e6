"""Prometheus metrics (prometheus-client). With several workers (`serve --workers N`) each process writes to the
directory in PROMETHEUS_MULTIPROC_DIR (set by `encoderforge serve` before the workers start) and /metrics sums them
with the library's MultiProcessCollector, so any worker answers for all."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

REQUESTS = Counter("encoderforge_requests_total", "Requests answered, by endpoint and status", ["endpoint", "status"])
LATENCY = Histogram(
    "encoderforge_request_seconds",
    "Request latency by endpoint",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
TOKENS = Counter("encoderforge_tokens_total", "Tokens embedded")
DISCONNECTS = Counter("encoderforge_disconnects_total", "Requests whose client went away before the answer")
DROPPED = Counter("encoderforge_dropped_total", "Queued requests skipped because their client had gone (no model work done)")
SEARCH = Histogram(
    "encoderforge_index_search_seconds",
    "Time in the index itself per /v1/search request (after the query is embedded)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)
QUEUE = Gauge("encoderforge_queue_depth", "Requests waiting for a batch", multiprocess_mode="livesum")


def observe(endpoint: str, status: int, seconds: float) -> None:
    REQUESTS.labels(endpoint, str(status)).inc()
    LATENCY.labels(endpoint).observe(seconds)


def tokens(n: int) -> None:
    TOKENS.inc(n)


def searched(seconds: float) -> None:
    SEARCH.observe(seconds)


def disconnected() -> None:
    DISCONNECTS.inc()


def dropped() -> None:
    DROPPED.inc()


def queue_depth(n: int) -> None:
    QUEUE.set(n)


def render() -> tuple[bytes, str]:
    """The text exposition: this process's registry, or every worker's when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
