"""CLI: `data prepare` and `pretrain` through Typer's CliRunner on the sub-apps; bad input is one clean error line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from encoderforge.cli.pretrain import app, data_app

runner = CliRunner()
TINY = str(Path(__file__).parents[2] / "configs" / "pretrain-tiny.yaml")


def test_data_prepare(tmp_path, legal_dir, small_tokenizer):
    out = tmp_path / "shards"
    res = runner.invoke(
        data_app,
        ["prepare", f"{legal_dir}=legal:2", "--tokenizer", str(small_tokenizer), "--out", str(out), "--eval-fraction", "0.2"],
    )
    assert res.exit_code == 0, res.output
    assert "legal:" in res.output and "weight 2.0" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["corpora"][0]["weight"] == 2.0 and manifest["corpora"][0]["duplicates"] == 1
    res = runner.invoke(data_app, ["prepare", str(legal_dir), "--tokenizer", str(small_tokenizer), "--out", str(out)])
    assert res.exit_code == 1 and "error:" in res.output and "already prepared" in res.output


def test_pretrain_runs_and_reports(tmp_path, tiny_overrides):
    args = [x for kv in tiny_overrides(tmp_path / "run", **{"train.steps": 3}) for x in ("--set", kv)]
    res = runner.invoke(app, ["--config", TINY, *args])
    assert res.exit_code == 0, res.output
    final = json.loads(res.output[res.output.index("{") :])
    assert final["step"] == 3 and final["eval_mlm_loss"] > 0


def test_pretrain_errors_name_the_field(tmp_path, tiny_overrides):
    res = runner.invoke(app, ["--config", TINY, "--set", "train.learning_rate=1"])
    assert res.exit_code == 1 and "unknown field(s) ['learning_rate']" in res.output
    res = runner.invoke(app, ["--config", TINY, "--set", f"train.out_dir={tmp_path}"])
    assert res.exit_code == 1 and "data.shards is not set" in res.output
    args = [x for kv in tiny_overrides(tmp_path / "r") for x in ("--set", kv)]
    res = runner.invoke(app, [*args, "--set", "model.overrides={hidden: 8}"])
    assert res.exit_code == 1 and "model.overrides: unknown field(s) ['hidden']" in res.output
    res = runner.invoke(app, ["--config", TINY, "--print-config", "--set", "train.lr=3e-4"])
    assert res.exit_code == 0 and json.loads(res.output)["train"]["lr"] == 3e-4


def test_freeze_encoder_trains_the_head_only_then_continues_from_it(tmp_path, tiny_overrides):
    """Domain adaptation's two phases: a head-only warm-up leaves every encoder tensor as it was; a second run
    initialised from it starts from that head and moves the encoder."""
    import torch

    from encoderforge.model import checkpoint

    first = tmp_path / "head"
    args = [x for kv in tiny_overrides(first, **{"train.steps": 3, "model.freeze_encoder": True}) for x in ("--set", kv)]
    assert runner.invoke(app, ["--config", TINY, *args]).exit_code == 0
    # the same seed builds the same initial encoder: a reference run whose one step moves weights by ~1e-30
    ref = tmp_path / "ref"
    args = [x for kv in tiny_overrides(ref, **{"train.steps": 1, "train.lr": 1e-30}) for x in ("--set", kv)]
    assert runner.invoke(app, ["--config", TINY, *args]).exit_code == 0
    head, base = checkpoint.load(first / "model"), checkpoint.load(ref / "model")
    for name, t in base.encoder.state_dict().items():
        assert torch.allclose(head.encoder.state_dict()[name], t, rtol=0, atol=1e-20), name
    assert any(not torch.allclose(head.extra[k], base.extra[k]) for k in head.extra if k.startswith("mlm."))

    second = tmp_path / "full"
    args = [
        x
        for kv in tiny_overrides(second, **{"train.steps": 2, "model.init_from": first / "model", "model.overrides": "{}"})
        for x in ("--set", kv)
    ]
    res = runner.invoke(app, ["--config", TINY, *args])
    assert res.exit_code == 0, res.output
    full = checkpoint.load(second / "model")
    assert any(not torch.equal(full.encoder.state_dict()[n], t) for n, t in head.encoder.state_dict().items())
