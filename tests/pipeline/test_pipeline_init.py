"""`encoderforge init` writes a pipeline YAML that `run` accepts, from the user's own files, checked first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from encoderforge.cli.app import app
from encoderforge.pipeline.config import load_pipeline


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_init_detects_multilabel_and_writes_a_pipeline_run_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [{"body": f"text {i}", "keys": ["mit", "gpl-2.0"][: 1 + i % 2]} for i in range(20)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:5])
    (tmp_path / "domain.txt").write_text("Permission is hereby granted, free of charge.\n")
    res = CliRunner().invoke(
        app,
        ["init", "train.jsonl", "--test", "test.jsonl", "--text-field", "body", "--label-field", "keys",
         "--adapt-text", "domain.txt", "--out", "p.yaml"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cfg = load_pipeline("p.yaml")
    assert cfg.finetune is not None and cfg.finetune.task == "multilabel" and cfg.finetune.data.test == "test.jsonl"
    assert cfg.finetune.data.text_field == ["body"] and cfg.finetune.data.label_field == "keys"
    assert cfg.adapt is not None and cfg.adapt.text == "domain.txt"
    assert cfg.stages == ["adapt", "finetune", "compress", "evaluate", "bench", "export", "report"]
    again = CliRunner().invoke(app, ["init", "train.jsonl", "--out", "p.yaml"])
    assert again.exit_code == 1 and "already exists" in again.stderr  # never replaces a file


def test_init_csv_without_test_turns_off_the_stages_that_score_it(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("text,label\nhello there,a\nbye now,b\n")
    out = tmp_path / "sub" / "q.yaml"
    out.parent.mkdir()
    res = CliRunner().invoke(app, ["init", str(tmp_path / "t.csv"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = load_pipeline(out)
    assert cfg.finetune is not None and cfg.finetune.task == "classify"
    assert Path(cfg.finetune.data.train).is_absolute()  # the YAML sits elsewhere: paths do not depend on the cwd
    assert cfg.stages == ["finetune", "export", "report"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["t.csv", "--label-field", "topic"], "t.csv:1: missing column 'topic'"),
        (["nope.csv"], "nope.csv: no such file"),
        (["t.csv", "--task", "ner"], "--task 'ner'; use auto, classify or multilabel"),
        (["bad.jsonl"], "bad.jsonl:2: not valid JSON"),
    ],
)
def test_init_bad_input_is_one_line_and_writes_nothing(
    args: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("text,label\nhello there,a\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{oops\n')
    res = CliRunner().invoke(app, ["init", *args, "--out", "p.yaml"])
    assert res.exit_code == 1 and expected in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert not (tmp_path / "p.yaml").exists()
