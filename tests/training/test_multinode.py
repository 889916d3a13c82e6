"""Scale-out beyond one machine: two separate `torchrun` launchers (`--nnodes 2`, one process each, c10d rendezvous
on 127.0.0.1, gloo over loopback) follow the single-process loss curve for the same global batch, for pretraining
and for fine-tuning. Each launcher is what one machine of an N-machine job runs (docs/scale-out.md). Both sides run
the CLI (`python -m encoderforge ...` for the single process), so the test compares exactly the documented commands."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from run_helpers import read_losses

from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder

NODES = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (torchrun starts its workers in sessions of their own, so killing the
    launcher's process group would not reach them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


FINISHED = "worker group successfully finished"  # torchrun's agent log line (LOGLEVEL=INFO) once its workers exit 0


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[2]),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "LOGLEVEL": "INFO",  # torchrun's agent says when its worker group finished (FINISHED)
    }


def run_single(module_args: list[str], timeout: float = 240) -> None:
    """The 1-process reference: `python -m encoderforge ...` (world size 1, no process group)."""
    res = subprocess.run(
        [sys.executable, "-m", "encoderforge", *module_args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-2500:]


def run_nodes(module_args: list[str], logs: Path, timeout: float = 240) -> None:
    """Start one `torchrun --nnodes 2 --nproc_per_node 1` launcher per "node" (same host, c10d rendezvous), wait for
    both, and fail with their logs unless both exit 0. A launcher that fails or overruns takes the other down."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    cmd = [
        torchrun,
        "--nnodes",
        str(NODES),
        "--nproc_per_node",
        "1",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv_id",
        f"ef-{uuid.uuid4().hex[:12]}",
        "--local_addr",
        "127.0.0.1",
        "--max_restarts",
        "0",
        "-m",
        "encoderforge",
        *module_args,
    ]
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        for node in range(NODES):
            with open(logs / f"node{node}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs):
            if any(p.returncode for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                kill_tree(p)
    text = [(logs / f"node{i}.log").read_text(errors="replace") for i in range(len(procs))]
    tails = "\n".join(f"--- node{i} (exit {p.returncode}) ---\n" + text[i][-4000:] for i, p in enumerate(procs))
    # A launcher whose worker group finished may still exit non-zero: torchrun's exit barrier races the node that
    # hosts the rendezvous store leaving first ("Failed to recv", SIGABRT; seen once in ~6 full runs). That is
    # torch's teardown, after our workers wrote everything the test then checks; any other failure still fails here.
    assert all(p.returncode == 0 or FINISHED in text[i] for i, p in enumerate(procs)), tails


@pytest.mark.slow
def test_two_node_pretraining_matches_single_process(tiny_overrides, tmp_path):
    # the same run as tests/training/test_ddp.py: global batch train.batch_rows=8 = 4 rows per node; dropout off
    # (each process draws its own dropout masks, so only a dropout-free curve can match exactly)
    over = {
        "train.steps": 6,
        "train.eval_every": 3,
        "train.save_every": 3,
        "model.overrides": "{dropout: 0.0, attention_dropout: 0.0}",
    }
    run_single(["pretrain", *[x for kv in tiny_overrides(tmp_path / "single", **over) for x in ("--set", kv)]])
    run_nodes(["pretrain", *[x for kv in tiny_overrides(tmp_path / "multi", **over) for x in ("--set", kv)]], tmp_path / "logs")

    single, multi = read_losses(tmp_path / "single"), read_losses(tmp_path / "multi")
    assert sorted(single) == sorted(multi) == list(range(1, 7))
    for s in single:
        assert multi[s] == pytest.approx(single[s], rel=1e-4, abs=1e-4), s
    assert single[6] < single[1]
    ev_1, ev_2 = (
        [
            json.loads(x)["eval_mlm_loss"]
            for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()
            if "eval_mlm_loss" in x
        ]
        for r in ("single", "multi")
    )
    assert len(ev_2) == 3  # steps 0, 3, 6
    assert ev_2 == pytest.approx(ev_1, rel=1e-4)
    # one run directory, written by global rank 0: checkpoints every train.save_every steps and the final model
    assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    assert (tmp_path / "multi" / "model" / "model.safetensors").exists()


def bbc_rows() -> list[tuple[str, str]]:
    """(topic, opening of the article) for 100 real BBC articles, 20 per topic, shuffled (as tests/tasks/conftest)."""
    from encoderforge.data.datasets import bbc_documents

    by_topic: dict[str, list[str]] = {}
    for topic, text in bbc_documents():
        by_topic.setdefault(topic, []).append(text)
    rows = [(t, text[:600]) for t in sorted(by_topic) for text in by_topic[t][:20]]
    random.Random(0).shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((text, topic) for topic, text in rows)


def curve(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return (
        {r["step"]: r["loss"] for r in rows if "loss" in r},
        {r["step"]: r["eval_accuracy"] for r in rows if "eval_accuracy" in r},
    )


@pytest.mark.slow
def test_two_node_finetuning_matches_single_process(minilm_path, tmp_path):
    # the same run as tests/tasks/test_finetune_ddp.py: global batch --batch-size 16, every other example per node
    rows = bbc_rows()
    torch.manual_seed(0)
    model = tmp_path / "tiny-nodrop"
    checkpoint.save(
        Encoder(preset("bert-tiny", vocab_size=30522, max_position=128, dropout=0.0, attention_dropout=0.0)),
        model,
        tokenizer_dir=minilm_path,
    )
    write_csv(tmp_path / "train.csv", rows[:80])
    write_csv(tmp_path / "test.csv", rows[80:])
    flags = [
        "--max-length",
        "48",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "2e-3",
        "--seed",
        "0",
        "--threads",
        "1",
        "--dev-fraction",
        "0.25",
    ]
    cmd = [
        "finetune",
        "classify",
        "--model",
        str(model),
        "--train",
        str(tmp_path / "train.csv"),
        "--test",
        str(tmp_path / "test.csv"),
        *flags,
        "--out",
    ]
    run_single([*cmd, str(tmp_path / "single")])
    run_nodes([*cmd, str(tmp_path / "multi")], tmp_path / "logs")
    single, multi = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("single", "multi"))

    (loss_1, dev_1), (loss_2, dev_2) = curve(tmp_path / "single"), curve(tmp_path / "multi")
    assert sorted(loss_1) == sorted(loss_2) == list(range(1, 13))  # 60 train rows / 16 = 4 steps x 3 epochs
    for s in loss_1:
        assert loss_2[s] == pytest.approx(loss_1[s], rel=1e-4, abs=1e-4), s
    assert loss_1[12] < loss_1[1]
    assert sorted(dev_1) == sorted(dev_2) == [0, 4, 8, 12]
    assert dev_2 == pytest.approx(dev_1, abs=1e-6)  # accuracy over all 20 dev rows, reduced over both nodes
    assert multi["best_step"] == single["best_step"] and multi["train_examples"] == 60
    assert multi["test"]["accuracy"] == pytest.approx(single["test"]["accuracy"], abs=1e-6)
    assert (tmp_path / "multi" / "task.json").exists() and (tmp_path / "multi" / "model").is_dir()
