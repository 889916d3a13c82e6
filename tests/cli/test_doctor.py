"""`encoderforge doctor` (issue 19): the CPU flags and the kernel choices measured on this machine, from the cache."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from encoderforge.cli.app import app
from encoderforge.hardware.cpu import cpu_info

runner = CliRunner()


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
    assert [t.split("/")[0] for t in tasks] == ["int8_linear", "train_linear"]
    for c in rep["choices"].values():
        assert c["picked"] in c["errors"] and (not c["ms"] or c["picked"] == min(c["ms"], key=c["ms"].get))
    text = runner.invoke(app, ["doctor"]).output  # read back from the cache, no measuring
    train = next(t for t in tasks if t.startswith("train_linear"))
    assert f"{train}: {rep['choices'][train]['picked']}" in text
