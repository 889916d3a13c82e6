"""Rerunning a pretraining run: a finished run with the same config is a no-op that keeps its metrics; a changed
config is refused with the changed keys named (before any work, nothing rewritten); more steps continue it."""

from __future__ import annotations

import json

import pytest

from encoderforge import EncoderforgeError
from encoderforge.recipes.pretrain import load_config, pretrain


def test_rerun_finished_same_config_changed_config_and_more_steps(tiny_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    over = {"train.steps": 4, "train.eval_every": 2, "train.save_every": 2}
    first = pretrain(load_config(None, tiny_overrides(run, **over)))
    metrics = (run / "metrics.json").read_bytes()
    config = (run / "config.yaml").read_bytes()
    assert "eval_mlm_loss" in json.loads(metrics)

    again = pretrain(load_config(None, tiny_overrides(run, **over)))
    assert again == first and (run / "metrics.json").read_bytes() == metrics
    assert "already finished" in capsys.readouterr().err

    with pytest.raises(EncoderforgeError, match=r"already holds a finished run \(changed: train.lr\)"):
        pretrain(load_config(None, tiny_overrides(run, **over, **{"train.lr": 1e-3})))
    assert (run / "metrics.json").read_bytes() == metrics and (run / "config.yaml").read_bytes() == config

    more = pretrain(load_config(None, tiny_overrides(run, **{**over, "train.steps": 6})))
    assert more["step"] == 6 and "eval_mlm_loss" in more


def test_out_dir_that_is_not_a_run_is_refused(tiny_overrides, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(EncoderforgeError, match="is not an encoderforge run"):
        pretrain(load_config(None, tiny_overrides(mine, **{"train.steps": 2})))
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
