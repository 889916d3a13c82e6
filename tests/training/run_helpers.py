"""Helpers shared by the training tests (a module with its own name: `from conftest import ...` would resolve to
whichever test folder's conftest.py was imported first when several folders are collected together)."""

from __future__ import annotations

from pathlib import Path


def read_losses(run: Path) -> dict[int, float]:
    import json

    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


RUNNER = """
import sys, torch
torch.set_num_threads(1)
from encoderforge.recipes.pretrain import load_config
from encoderforge.recipes.pretrain import pretrain
pretrain(load_config(None, sys.argv[1:]))
"""


def sigkill_after_checkpoint(overrides: list[str], run: Path, step: int) -> int:
    """Run `pretrain` with `overrides` in a subprocess, SIGKILL it once checkpoint `step` exists, and return the
    latest checkpoint's step (what a restart resumes from)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *overrides], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while not (run / "checkpoints" / f"step-{step:08d}").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return int(sorted((run / "checkpoints").iterdir())[-1].name.split("-")[1])
