"""Fixtures for training tests: the small legal corpus (tests/conftest.py) prepared into shards."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def legal_shards(tmp_path_factory, legal_dir, small_tokenizer) -> Path:
    """The legal corpus prepared into shards with a 20% held-out split."""
    from encoderforge.data.corpus import CorpusSpec, prepare_corpus

    out = tmp_path_factory.mktemp("shards") / "legal"
    prepare_corpus([CorpusSpec(str(legal_dir), name="legal")], small_tokenizer, out, eval_fraction=0.2)
    return out


@pytest.fixture
def tiny_overrides(legal_shards, small_tokenizer, tmp_path):
    """`--set` overrides for a seconds-long bert-tiny run on the legal shards (dropout on: RNG is exercised)."""
    def make(out: Path | None = None, **extra) -> list[str]:
        base = {"data.shards": legal_shards, "model.tokenizer": small_tokenizer, "model.preset": "bert-tiny",
                "data.max_len": 64, "data.eval_rows": 8, "train.batch_rows": 8, "train.steps": 12,
                "train.warmup_steps": 2, "train.lr": 2e-3, "train.log_every": 1, "train.eval_every": 6,
                "train.save_every": 4, "train.progress": False, "train.device": "cpu",
                "train.out_dir": out or tmp_path / "run", "masking.strategy": "mixed", "masking.ratio": 0.3}
        base.update(extra)
        return [f"{k}={v}" for k, v in base.items()]
    return make


def read_losses(run: Path) -> dict[int, float]:
    import json

    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


RUNNER = """
import sys, torch
torch.set_num_threads(1)
from encoderforge.training.args import load_config
from encoderforge.training.pretrain import pretrain
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
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "checkpoints" / f"step-{step:08d}").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return int(sorted((run / "checkpoints").iterdir())[-1].name.split("-")[1])
