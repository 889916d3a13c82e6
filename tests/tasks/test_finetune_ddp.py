"""Fine-tuning under torchrun (gloo, 2 CPU processes) follows the single-process run with the same global batch:
the same loss at every step, the same dev curve, the same best epoch and test score, one run directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.recipes.finetune import finetune
from encoderforge.recipes.finetune_config import finetune_config


def curve(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return (
        {r["step"]: r["loss"] for r in rows if "loss" in r},
        {r["step"]: r["eval_accuracy"] for r in rows if "eval_accuracy" in r},
    )


def test_two_process_finetune_matches_single_process(minilm_path, bbc_rows, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    # dropout off: each process draws its own dropout masks, so only a dropout-free run can match exactly
    torch.manual_seed(0)
    model = tmp_path / "tiny-nodrop"
    checkpoint.save(
        Encoder(preset("bert-tiny", vocab_size=30522, max_position=128, dropout=0.0, attention_dropout=0.0)),
        model,
        tokenizer_dir=minilm_path,
    )
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((text, topic) for topic, text in bbc_rows[:80])
    with open(tmp_path / "test.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((text, topic) for topic, text in bbc_rows[80:])
    opts = dict(max_length=48, epochs=3, batch_size=16, lr=2e-3, seed=0, threads=1, dev_fraction=0.25)
    keys = {
        "max_length": "finetune.max_length",
        "epochs": "finetune.epochs",
        "batch_size": "train.batch_rows",
        "lr": "train.lr",
        "seed": "train.seed",
        "threads": "finetune.threads",
        "dev_fraction": "data.dev_fraction",
    }
    single = finetune(
        finetune_config(
            "classify",
            values={
                "model": str(model),
                "data.train": str(tmp_path / "train.csv"),
                "data.test": str(tmp_path / "test.csv"),
                "train.out_dir": str(tmp_path / "single"),
                **{keys[k]: v for k, v in opts.items()},
            },
        )
    ).metrics

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    flags = [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "encoderforge",
        "finetune",
        "classify",
        "--model",
        str(model),
        "--train",
        str(tmp_path / "train.csv"),
        "--test",
        str(tmp_path / "test.csv"),
        "--out",
        str(tmp_path / "ddp"),
        *flags,
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())

    (loss_1, dev_1), (loss_2, dev_2) = curve(tmp_path / "single"), curve(tmp_path / "ddp")
    assert sorted(loss_1) == sorted(loss_2) == list(range(1, 13))  # 60 train rows / 16 = 4 steps x 3 epochs
    for s in loss_1:
        assert loss_2[s] == pytest.approx(loss_1[s], rel=1e-4, abs=1e-4), s
    assert loss_1[12] < loss_1[1]
    assert sorted(dev_1) == sorted(dev_2) == [0, 4, 8, 12]
    assert dev_2 == pytest.approx(dev_1, abs=1e-6)  # accuracy over all 20 dev rows, reduced over both ranks
    assert ddp["best_step"] == single["best_step"] and ddp["train_examples"] == 60
    assert ddp["test"]["accuracy"] == pytest.approx(single["test"]["accuracy"], abs=1e-6)
    assert (tmp_path / "ddp" / "task.json").exists() and not (tmp_path / "ddp" / "checkpoints").exists()
