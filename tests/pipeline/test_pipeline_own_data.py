"""examples/own-data.yaml on the user's own files (real BBC News articles, classify) with a tiny random model:
the no-data-stage path, user files hashed into the finetune stage, and a changed file reruns the stages it feeds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from encoderforge.cli.app import app
from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own-data.yaml"


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for lab, t in rows), encoding="utf-8")


def test_own_data_example_runs_and_reruns_on_changed_files(tmp_path: Path, minilm_path: Path) -> None:
    from encoderforge.data.datasets import bbc_documents

    docs = bbc_documents()
    rows = [(topic, text[:300]) for topic, text in docs]
    random.Random(0).shuffle(rows)
    write_jsonl(tmp_path / "train.jsonl", rows[:80])
    write_jsonl(tmp_path / "test.jsonl", rows[80:120])
    torch.manual_seed(0)
    tiny = checkpoint.save(
        Encoder(preset("bert-tiny", vocab_size=30522, max_position=128)), tmp_path / "tiny", tokenizer_dir=minilm_path
    )
    sets = [
        f"finetune.model={tiny}",
        f"finetune.data.train={tmp_path / 'train.jsonl'}",
        f"finetune.data.test={tmp_path / 'test.jsonl'}",
        "finetune.finetune.epochs=1",
        "finetune.finetune.max_length=64",
        "bench.texts=16",
        "bench.latency_texts=4",
        "bench.rounds=1",
        "bench.transformers=false",
        "export.onnx=true",
    ]
    args = ["run", str(EXAMPLE), "--out", str(tmp_path / "run"), *(a for s in sets for a in ("--set", s))]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "ran 6, skipped 0" in res.stderr and "TF-IDF + LR" in res.output
    ev = json.loads((tmp_path / "run" / "evaluate" / "metrics.json").read_text())
    onnx = json.loads((tmp_path / "run" / "export" / "metrics.json").read_text())["onnx"]
    assert Path(onnx["path"]).is_file() and onnx["min_cosine"] > 0.999
    assert ev["primary"] == "accuracy" and 0 <= ev["models"]["TF-IDF + LR"]["accuracy"] <= 1
    write_jsonl(tmp_path / "test.jsonl", rows[80:110])  # the user's test file changed: every stage after data reruns
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "ran 6, skipped 0" in res.stderr, res.stderr
    assert json.loads((tmp_path / "run" / "finetune" / "metrics.json").read_text())["test_examples"] == 30


def test_own_data_example_without_files_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", str(EXAMPLE), "--out", "runs/x"])
    assert res.exit_code == 1 and "finetune.data.train='my-train.jsonl': no such file; fix the path" in res.stderr


def test_kill_9_during_finetune_resumes(tmp_path: Path, minilm_path: Path) -> None:
    """A pipeline killed with SIGKILL inside fine-tuning resumes from the recipe's last checkpoint on rerun."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from encoderforge.data.datasets import bbc_documents

    rows = [(topic, text[:300]) for topic, text in bbc_documents()]
    random.Random(1).shuffle(rows)
    write_jsonl(tmp_path / "train.jsonl", rows[:160])
    torch.manual_seed(0)
    tiny = checkpoint.save(
        Encoder(preset("bert-tiny", vocab_size=30522, max_position=128)), tmp_path / "tiny", tokenizer_dir=minilm_path
    )
    (tmp_path / "p.yaml").write_text(
        f"finetune: {{task: classify, model: {tiny}, data: {{train: {tmp_path / 'train.jsonl'}}},\n"
        "  finetune: {epochs: 4, max_length: 64, threads: 1}, train: {batch_rows: 8, save_every: 5}}\n"
    )
    cmd = [sys.executable, "-m", "encoderforge", "run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "run")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "run" / "finetune" / "checkpoints"
    deadline = time.monotonic() + 90

    def saved_steps() -> list[int]:  # finished checkpoints only (atomic_dir writes a hidden temp dir first)
        return [int(p.name.split("-")[-1]) for p in ckpts.glob("step-*")] if ckpts.is_dir() else []

    while not saved_steps() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert saved_steps(), "no checkpoint before the kill"
    assert not (tmp_path / "run" / "finetune" / "stage.json").exists()
    saved = max(saved_steps())
    log = tmp_path / "run" / "finetune" / "metrics.jsonl"
    before = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= saved]
    res = subprocess.run([*cmd, "--set", "finetune.finetune.epochs=2"], env=env, capture_output=True, text=True, timeout=120)
    # epochs changed: a different config is refused by the recipe rather than silently mixed
    assert res.returncode == 1 and "unfinished run with another config" in res.stderr, res.stderr
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    after = log.read_text().splitlines()
    # resumed, not restarted: the lines logged up to the checkpoint (timings included) are kept as they were
    assert saved >= 5 and after[: len(before)] == before
    assert [json.loads(line)["step"] for line in after] == sorted({json.loads(line)["step"] for line in after})
    assert "ran 1, skipped 0" in res.stderr
