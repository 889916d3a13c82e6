"""`encoderforge doctor` (issue 19): the CPU flags and the kernel choices measured on this machine, from the cache."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from encoderforge.cli.app import app
from encoderforge.hardware.cpu import cpu_info

runner = CliRunner()


@pytest.fixture(autouse=True)
def _short_training_steps(monkeypatch):
    # the training choice times whole MiniLM steps: 2 x 16 tokens keep this test quick (the choice itself is tested
    # in tests/training/test_fast_linear.py)
    from encoderforge.training import fast_linear

    monkeypatch.setattr(fast_linear, "STEP_ROWS", 2)
    monkeypatch.setattr(fast_linear, "STEP_LEN", 16)


def test_doctor_measures_then_prints_cached_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCODERFORGE_CACHE_DIR", str(tmp_path))
    empty = runner.invoke(app, ["doctor"])
    assert empty.exit_code == 0, empty.output
    assert f"CPU: {cpu_info().model}" in empty.output and "none measured on this machine yet" in empty.output
    r = runner.invoke(app, ["doctor", "--measure", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["flags"] == list(cpu_info().flags) and rep["cache"] == str(tmp_path / "kernels.json")
    tasks = sorted(rep["choices"])
    kinds = {t.split("/")[0].split(":")[0] for t in tasks}
    assert {"int8_linear", "train_step", "infer-linear-fp32"} <= kinds
    assert (
        "infer-precision-" + rep["choices"][next(t for t in tasks if t.startswith("infer-linear-fp32"))]["picked"] in kinds
    ) == cpu_info().bf16
    for c in rep["choices"].values():
        fastest = min(c["ms"], key=c["ms"].get) if c["ms"] else c["picked"]
        assert c["picked"] in c["errors"] and (c["picked"] == fastest or "kept the default" in c["note"])
    text = runner.invoke(app, ["doctor"]).output  # read back from the cache, no measuring
    train = next(t for t in tasks if t.startswith("train_step"))
    assert train.startswith("train_step/384x384,384x1152,384x1536,1536x384@")  # the MiniLM encoder's own shapes
    assert f"{train}: {rep['choices'][train]['picked']}" in text


def test_doctor_measure_replaces_a_cached_choice(tmp_path, monkeypatch):
    """A choice cached while the machine was busy is measured again by --measure (not read back)."""
    from encoderforge.hardware.cache import read_choices, write_choice
    from encoderforge.model import Encoder, preset
    from encoderforge.recipes.doctor import MINILM_VOCAB
    from encoderforge.training.fast_linear import train_linear_choice

    monkeypatch.setenv("ENCODERFORGE_CACHE_DIR", str(tmp_path))
    minilm = Encoder(preset("minilm-l6", vocab_size=MINILM_VOCAB))  # what doctor --measure times
    task = train_linear_choice(minilm).task
    write_choice(task, {"picked": "torch", "ms": {"torch": 1.0, "onednn": 999.0}, "errors": {}, "rejected": {}, "note": "stale"})
    assert train_linear_choice(minilm).note == "stale"
    assert runner.invoke(app, ["doctor", "--measure"]).exit_code == 0
    assert read_choices()[task]["note"] != "stale" and read_choices()[task]["ms"]["onednn"] < 999.0
