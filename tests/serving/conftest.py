"""Real servers for the serving tests: `python -m encoderforge serve ...` started as a subprocess on a free loopback
port, waited for on /ready, stopped with SIGTERM (graceful drain) at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, model: str | Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "encoderforge", "serve", str(model), "--port", str(self.port), "--threads", "1", *args]
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.proc.stdout.read() if self.proc.stdout else ''}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready in 120 s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read() if self.proc.stdout else ""


@pytest.fixture(scope="session")
def start_server() -> Iterator:
    servers: list[Server] = []

    def start(model: str | Path, *args: str, env: dict[str, str] | None = None) -> Server:
        s = Server(model, *args, env=env)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def minilm_server(start_server, minilm_path: Path) -> Server:
    """The real MiniLM-L6 serving embeddings, small queue limits so that limits are cheap to reach."""
    return start_server(minilm_path, "--max-items", "512", "--max-chars", "5000")
