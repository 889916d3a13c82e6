"""A killed `encoderforge finetune` resumes: rerunning the same command after kill -9 continues from the last
checkpoint (model, optimizer, data position, the best-epoch keeper's weights and patience) and ends with the same
metrics as an uninterrupted run; a finished run is not retrained, and a changed config is refused by name."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def write_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((text, topic) for topic, text in rows)
    return path


def command(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "encoderforge",
        "finetune",
        "classify",
        "--model",
        str(model),
        "--train",
        str(data / "train.csv"),
        "--dev",
        str(data / "dev.csv"),
        "--test",
        str(data / "test.csv"),
        "--out",
        str(out),
        "--epochs",
        "4",
        "--batch-size",
        "4",
        "--max-length",
        "32",
        "--lr",
        "2e-3",
        "--threads",
        "1",
        "--save-every",
        "3",
        "--evals-per-epoch",
        "2",
        "--patience",
        "3",
        *extra,
    ]


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def test_kill_9_then_rerun_gives_the_uninterrupted_metrics(tiny_model, bbc_rows, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", bbc_rows[:60]), write_csv(data / "dev.csv", bbc_rows[60:80])
    write_csv(data / "test.csv", bbc_rows[80:])
    whole = run(command(tiny_model, data, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    out = tmp_path / "killed"
    proc = subprocess.Popen(command(tiny_model, data, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not any((out / "checkpoints").glob("step-0000001[2-9]")):  # past the first epoch (15 steps of 4 rows)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists() and not (out / "task.json").exists()
    assert json.loads((out / ".encoderforge-run.json").read_text())["status"] == "running"

    again = run(command(tiny_model, data, out))
    assert again.returncode == 0, again.stderr[-2000:]
    got = json.loads((out / "metrics.json").read_text())
    for key in ("dev", "test", "best_step", "epochs_run", "stopped_early"):
        assert got[key] == expected[key], key
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no step logged twice after the resume
    assert not (out / "checkpoints").exists()

    # a finished run with the same config and files: nothing to do, said so, exit 0, results untouched
    before = (out / "metrics.json").read_bytes()
    same = run(command(tiny_model, data, out))
    assert same.returncode == 0 and "already finished" in same.stderr
    assert (out / "metrics.json").read_bytes() == before
    # only settings that cannot change the result (threads, checkpoint spacing): still nothing to do — never a
    # retrain from scratch (a finished run keeps no checkpoint) that would replace the finished results
    log = (out / "metrics.jsonl").read_bytes()
    threads = run(command(tiny_model, data, out, "--threads", "2", "--save-every", "5"))
    assert threads.returncode == 0 and "already finished" in threads.stderr, threads.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() == before and (out / "metrics.jsonl").read_bytes() == log
    assert not (out / "checkpoints").exists()
    # another config: refused with the changed keys named, nothing touched
    other = run(command(tiny_model, data, out, "--seed", "1"))
    assert other.returncode == 1 and "train.seed" in other.stderr and "Traceback" not in other.stderr
    assert (out / "metrics.json").read_bytes() == before


def test_a_run_killed_after_early_stopping_stays_stopped(tiny_model, bbc_rows, tmp_path, monkeypatch):
    """The loop stopped early and saved; the process died before writing the run (simulated by failing
    write_run). The rerun restores the keeper (stopped, best weights) and trains no further step."""
    from encoderforge.recipes import finetune as recipe
    from encoderforge.recipes.finetune_config import finetune_config

    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", bbc_rows[:60]), write_csv(data / "dev.csv", bbc_rows[60:80])
    write_csv(data / "test.csv", bbc_rows[80:])

    def cfg(out: Path):
        return finetune_config(
            "classify",
            values={
                "model": str(tiny_model),
                "data.train": str(data / "train.csv"),
                "data.dev": str(data / "dev.csv"),
                "data.test": str(data / "test.csv"),
                "finetune.max_length": 32,
                "finetune.epochs": 12.0,
                "finetune.evals_per_epoch": 2,
                "finetune.patience": 1,
                "train.batch_rows": 8,
                "train.lr": 5e-2,
                "train.progress": False,
                "train.out_dir": str(out),
            },
        )

    whole = recipe.finetune(cfg(tmp_path / "whole")).metrics
    assert whole["stopped_early"], "the setting must stop early for this test to mean anything"

    def die(*a, **k):
        raise KeyboardInterrupt  # the process ends after the loop, before the run is written

    monkeypatch.setattr(recipe, "write_run", die)
    with pytest.raises(KeyboardInterrupt):
        recipe.finetune(cfg(tmp_path / "killed"))
    monkeypatch.undo()
    assert (tmp_path / "killed" / "checkpoints").is_dir() and not (tmp_path / "killed" / "task.json").exists()
    again = recipe.finetune(cfg(tmp_path / "killed")).metrics
    for key in ("dev", "test", "best_step", "epochs_run", "stopped_early"):
        assert again[key] == whole[key], key
