"""`finetune embed` under torchrun (gloo, 2 CPU processes) gathers every process's positives as negatives: its loss
at every step equals the single-process run with the same global batch (each query scored against all 16 positives,
not its process's 8), so the runs follow the same curve."""

from __future__ import annotations

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


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def test_two_process_embed_gathers_negatives_like_one_process(minilm_path, license_pairs, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    torch.manual_seed(0)
    model = tmp_path / "tiny-nodrop"  # dropout off: each process draws its own masks
    checkpoint.save(
        Encoder(preset("bert-tiny", vocab_size=30522, max_position=128, dropout=0.0, attention_dropout=0.0)),
        model,
        tokenizer_dir=minilm_path,
    )
    rows = license_pairs[:48]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in license_pairs[48:60]), encoding="utf-8")
    opts = {"max_length": 48, "epochs": 2, "batch_size": 16, "lr": 1e-3, "seed": 0, "threads": 1}
    keys = {"max_length": "finetune.max_length", "epochs": "finetune.epochs", "batch_size": "train.batch_rows",
            "lr": "train.lr", "seed": "train.seed", "threads": "finetune.threads"}  # fmt: skip
    files = {"data.train": str(tmp_path / "train.jsonl"), "data.dev": str(tmp_path / "dev.jsonl")}
    finetune(
        finetune_config(
            "embed",
            values={
                "model": str(model),
                "train.out_dir": str(tmp_path / "single"),
                **files,
                **{keys[k]: v for k, v in opts.items()},
            },
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    flags = [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "encoderforge", "finetune", "embed", "--model", str(model),
           "--train", files["data.train"], "--dev", files["data.dev"], "--out", str(tmp_path / "ddp"), *flags]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(one) == sorted(two) == list(range(1, 7))  # 48 pairs / 16 = 3 steps x 2 epochs
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), step
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["task"] == "embed"
