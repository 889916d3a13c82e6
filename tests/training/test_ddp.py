"""DDP under torchrun (gloo, 2 CPU processes) follows the single-process loss curve for the same global batch."""

from __future__ import annotations

import json

import pytest
import torch
from run_helpers import read_losses, run_pretrain_torchrun

from encoderforge.recipes.pretrain import load_config, pretrain


def test_two_process_ddp_matches_single_process(tiny_overrides, tmp_path):
    # dropout off: each process draws its own dropout masks, so only a dropout-free curve can match exactly
    over = {
        "train.steps": 6,
        "train.eval_every": 3,
        "train.save_every": 3,
        "model.overrides": "{dropout: 0.0, attention_dropout: 0.0}",
    }
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(load_config(None, tiny_overrides(tmp_path / "single", **over)))
    finally:
        torch.set_num_threads(n)
    run_pretrain_torchrun(tiny_overrides(tmp_path / "ddp", **over), tmp_path / "ddp")
    single, ddp = read_losses(tmp_path / "single"), read_losses(tmp_path / "ddp")
    assert sorted(single) == sorted(ddp) == list(range(1, 7))
    for s in single:
        assert ddp[s] == pytest.approx(single[s], rel=1e-4, abs=1e-4), s
    assert single[6] < single[1]
    ev = lambda run: [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if "eval_mlm_loss" in ln]  # noqa: E731
    for a, b in zip(ev(tmp_path / "single"), ev(tmp_path / "ddp")):
        assert json.loads(a)["eval_mlm_loss"] == pytest.approx(json.loads(b)["eval_mlm_loss"], rel=1e-4)
