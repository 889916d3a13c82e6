"""An open-loop HTTP load generator for `encoderforge bench serve`.

Requests are scheduled at fixed intended send times (i / rate) and each latency is timed from its intended send time,
not from when a free connection let it go, so a server that falls behind shows its queueing in the percentiles
(coordinated omission avoided). Failed requests (4xx/5xx/connection errors) are counted per kind and left out of
the percentiles and of req/s: a run with errors is reported with its error count beside them, never as clean. `concurrency` caps requests in flight (clients); with rate=None each client sends
its next request as soon as the last one returns (a closed loop: the peak throughput at that concurrency).

Written here (not with locust/k6): a few dozen lines on aiohttp, run in-process from a CLI command on a box with no
other tools, measuring exactly the intended-time latency the issue asks for.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    rate: float | None  # offered requests/s; None = closed loop
    requests: int
    ok: int
    errors: dict[str, int] = field(default_factory=dict)  # status (or exception name) -> count
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "concurrency": self.concurrency,
            "rate": self.rate,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "req_per_s": round(self.ok / self.seconds, 1) if self.seconds else None,
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
        }


async def _run(
    url: str, bodies: list[dict[str, Any]], concurrency: int, rate: float | None, headers: dict[str, str]
) -> LoadResult:
    import aiohttp  # a client with little CPU per request: on a 2-core box the generator shares the cores

    res = LoadResult(concurrency, rate, len(bodies), 0)
    payloads = [json.dumps(b).encode() for b in bodies]
    slots = asyncio.Semaphore(concurrency)
    conn = aiohttp.TCPConnector(limit=concurrency)
    hdrs = {"content-type": "application/json", **headers}
    async with aiohttp.ClientSession(connector=conn, headers=hdrs, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def warm() -> None:
            async with session.post(url, data=payloads[0]) as r:
                await r.read()

        await asyncio.gather(*(warm() for _ in range(concurrency)))  # every connection opened outside the clock
        t0 = time.perf_counter()

        async def one(i: int, payload: bytes) -> None:
            intended = t0 + i / rate if rate else None
            if intended is not None:
                await asyncio.sleep(max(0.0, intended - time.perf_counter()))
            async with slots:
                start = intended if intended is not None else time.perf_counter()
                try:
                    async with session.post(url, data=payload) as r:
                        await r.read()
                        key = None if r.status == 200 else str(r.status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    key = type(e).__name__
                end = time.perf_counter()
            if key is None:
                res.ok += 1
                res.latencies_ms.append((end - start) * 1000)
            else:
                res.errors[key] = res.errors.get(key, 0) + 1

        await asyncio.gather(*(one(i, p) for i, p in enumerate(payloads)))
        res.seconds = time.perf_counter() - t0
    return res


def run_load(
    url: str,
    bodies: list[dict[str, Any]],
    *,
    concurrency: int,
    rate: float | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST every body to `url` with at most `concurrency` in flight, open-loop at `rate` requests/s (or closed
    loop), and return counts, wall time and per-request latencies (ms, from the intended send time)."""
    return asyncio.run(_run(url, bodies, concurrency, rate, headers or {}))
