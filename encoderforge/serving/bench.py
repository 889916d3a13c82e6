"""`encoderforge bench serve`: our server vs a plain FastAPI + sentence-transformers server (one encode per request)
vs infinity-emb, the same model, the same short real texts, on loopback, in one run.

All servers are started first (each a subprocess with the same torch thread count); then for each round, each
concurrency level, each server in turn: a closed-loop pass (peak requests/s at that concurrency). Medians over rounds.
Then one open-loop pass per server at the same offered rate (80% of the slowest server's peak at the highest
concurrency), latency from the intended send time: p99 at equal load.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoderforge import EncoderforgeError, require
from encoderforge.fileio import atomic_file, check_output
from encoderforge.model.zoo import resolve_model
from encoderforge.serving.loadgen import run_load

OURS, PLAIN, INFINITY = "encoderforge serve", "FastAPI + sentence-transformers", "infinity-emb"


def short_texts(n: int) -> list[str]:
    """Short real texts: the first 4-16 words of BBC News articles (mlarchive-bbc-news)."""
    from encoderforge.data.datasets import bbc_documents

    out = []
    for i, (_, text) in enumerate(bbc_documents()):
        words = text.split()
        out.append(" ".join(words[: 4 + i % 13]))
        if len(out) == n:
            break
    return out


@dataclass
class Proc:
    name: str
    url: str
    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(name: str, cmd: list[str], path: str, threads: int, log: Path) -> Proc:
    import httpx

    p = _free_port()
    cmd = [str(p) if x == "PORT" else x for x in cmd]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    fh = log.open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{p}{path}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise EncoderforgeError(f"{name} exited with {proc.returncode} before it was ready; see {log}")
        try:
            if httpx.post(url, json={"input": ["ready?"]}, timeout=5).status_code == 200:
                return Proc(name, url, proc)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise EncoderforgeError(f"{name} was not ready in 180 s; see {log}")


def find_infinity(given: str | None) -> tuple[str | None, str]:
    """The infinity_emb executable and, when there is none, why."""
    local = Path(__file__).resolve().parents[2] / ".venv-infinity" / "bin" / "infinity_emb"  # scripts/setup-infinity.sh
    exe = (
        given
        or os.environ.get("ENCODERFORGE_INFINITY")
        or shutil.which("infinity_emb")
        or (str(local) if local.exists() else None)
    )
    if exe and Path(exe).exists():
        return exe, ""
    return None, (
        "infinity-emb not found (run scripts/setup-infinity.sh, or pass --infinity PATH/TO/infinity_emb); it pins its "
        "own fastapi/transformers versions, so it lives in its own venv (.venv-infinity), not in the project's"
    )


def bench_serve(
    model: str,
    out: str | Path,
    *,
    concurrency: tuple[int, ...] = (1, 8, 32, 64),
    requests: int = 400,
    rounds: int = 3,
    threads: int = 2,
    texts_per_request: int = 1,
    infinity: str | None = None,
    plain: bool = True,
) -> dict[str, Any]:
    """Run the comparison and write out/results.json, out/table.md and out/serve.png.

    Example:
        >>> bench_serve("minilm-l6", "runs/bench-serve", concurrency=(1, 32))
    """
    require("httpx", "serve")
    out = Path(out)
    check_output(out, [], flag="--out", expect="dir")
    if any(c < 1 for c in concurrency) or requests < 1 or rounds < 1:
        raise EncoderforgeError("--concurrency levels, --requests and --rounds must be >= 1")
    model_dir = str(resolve_model(model))
    out.mkdir(parents=True, exist_ok=True)
    texts = short_texts(max(requests * texts_per_request, 64))
    bodies = [{"input": texts[(i * texts_per_request) % len(texts) :][:texts_per_request]} for i in range(requests)]
    py = sys.executable
    specs: dict[str, tuple[list[str], str]] = {
        OURS: ([py, "-m", "encoderforge", "serve", model_dir, "--port", "PORT", "--threads", str(threads)], "/v1/embeddings"),
    }
    notes: dict[str, str] = {}
    if plain:
        specs[PLAIN] = ([py, "-m", "encoderforge.serving.plain", model_dir, "PORT", str(threads)], "/v1/embeddings")
    exe, why = find_infinity(infinity)
    if exe:
        specs[INFINITY] = (
            [exe, "v2", "--model-id", model_dir, "--port", "PORT", "--engine", "torch", "--device", "cpu",
             "--url-prefix", "/v1", "--no-model-warmup"],
            "/v1/embeddings",
        )  # fmt: skip
    else:
        notes[INFINITY] = why
    procs: dict[str, Proc] = {}
    try:
        for name, (cmd, path) in specs.items():
            try:
                procs[name] = _start(name, cmd, path, threads, out / f"{name.split()[0].lower()}.log")
            except EncoderforgeError as e:
                notes[name] = str(e)
        closed: dict[str, dict[int, list[dict[str, Any]]]] = {n: {c: [] for c in concurrency} for n in procs}
        for _ in range(rounds):
            for c in concurrency:
                for name, p in procs.items():
                    closed[name][c].append(run_load(p.url, bodies, concurrency=c).summary())
        table = {name: {c: _median(rs) for c, rs in by_c.items()} for name, by_c in closed.items()}
        top = max(concurrency)
        peaks = [table[n][top]["req_per_s"] or 0 for n in procs]
        rate = round(0.8 * min(peaks), 1) if peaks and min(peaks) > 0 else None
        open_loop = (
            {name: run_load(p.url, bodies, concurrency=top, rate=rate).summary() for name, p in procs.items()} if rate else {}
        )
    finally:
        for p in procs.values():
            p.stop()
    result = {
        "model": model_dir,
        "threads": threads,
        "texts_per_request": texts_per_request,
        "requests": requests,
        "rounds": rounds,
        "closed_loop": {n: {str(c): v for c, v in t.items()} for n, t in table.items()},
        "open_loop": {"rate": rate, "concurrency": top, "servers": open_loop},
        "notes": notes,
    }
    with atomic_file(out / "results.json") as f:
        json.dump(result, f, indent=2)
    with atomic_file(out / "table.md", encoding="utf-8") as f:
        f.write(table_md(result))
    plot(result, out / "serve.png")
    return result


def _median(rs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("req_per_s", "p50_ms", "p95_ms", "p99_ms")
    med = {
        k: round(statistics.median([r[k] for r in rs if r[k] is not None]), 2) if any(r[k] is not None for r in rs) else None
        for k in keys
    }
    errors: dict[str, int] = {}
    for r in rs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {**med, "errors": errors, "rounds": len(rs)}


def table_md(r: dict[str, Any]) -> str:
    names = list(r["closed_loop"])
    lines = [
        "| server | concurrency | req/s (median) | vs plain | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for c, v in r["closed_loop"][name].items():
            base = (r["closed_loop"].get(PLAIN) or {}).get(c, {}).get("req_per_s")
            ratio = f"{v['req_per_s'] / base:.2f}x" if base and v["req_per_s"] else "-"
            lines.append(
                f"| {name} | {c} | {v['req_per_s']} | {ratio} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | {sum(v['errors'].values())} |"
            )
    ol = r["open_loop"]
    if ol.get("servers"):
        lines += ["", f"Open loop at {ol['rate']} req/s offered, up to {ol['concurrency']} in flight (latency from the intended send time):", "",
                  "| server | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|"]  # fmt: skip
        for name, v in ol["servers"].items():
            lines.append(f"| {name} | {v['req_per_s']} | {v['p50_ms']} | {v['p99_ms']} | {sum(v['errors'].values())} |")
    for name, why in r["notes"].items():
        lines.append(f"\n{name}: not measured — {why}")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    require("matplotlib", "demo")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, by_c in r["closed_loop"].items():
        cs = [int(c) for c in by_c]
        a.plot(cs, [by_c[str(c)]["req_per_s"] for c in cs], "o-", label=name)
        b.plot(cs, [by_c[str(c)]["p99_ms"] for c in cs], "o-", label=name)
    for ax, ylabel in ((a, "requests/s (median of rounds)"), (b, "p99 latency, ms")):
        ax.set_xscale("log", base=2)
        levels = sorted({int(c) for t in r["closed_loop"].values() for c in t})
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    b.set_yscale("log")
    a.set_title(f"throughput, {r['texts_per_request']} short text(s) per request")
    b.set_title("tail latency")
    fig.tight_layout()
    with atomic_file(path, mode="wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
