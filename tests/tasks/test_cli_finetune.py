"""The CLI sub-app: finetune classify/ner from files, predict through the Engine, eval a leaderboard, and clean
errors (no traceback) for bad input."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from encoderforge.cli.finetune import app

runner = CliRunner()


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["body", "topic"])
        w.writerows((text, topic) for topic, text in rows)
    return path


def test_finetune_predict_eval(tiny_model, bbc_rows, wnut_rows, tmp_path, monkeypatch):
    train, dev = write_csv(tmp_path / "train.csv", bbc_rows[:60]), write_csv(tmp_path / "dev.csv", bbc_rows[60:80])
    common = ["--model", str(tiny_model), "--max-length", "48", "--batch-size", "16", "--lr", "2e-3", "--threads", "1"]
    r = runner.invoke(
        app,
        [
            "finetune",
            "classify",
            "--train",
            str(train),
            "--dev",
            str(dev),
            "--test",
            str(dev),
            "--text-field",
            "body",
            "--label-field",
            "topic",
            "--out",
            str(tmp_path / "cls"),
            "--epochs",
            "2",
            "--lr-decay",
            "0.9",
            "--max-chunks",
            "2",
            "--stride",
            "8",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["run"] == str(tmp_path / "cls") and 0 <= out["test"]["accuracy"] <= 1 and out["peak_rss_mb"] > 0

    conll = tmp_path / "wnut.conll"
    conll.write_text("\n\n".join("\n".join(f"{t}\t{g}" for t, g in zip(*row)) for row in wnut_rows[:60]) + "\n")
    r = runner.invoke(
        app,
        [
            "finetune",
            "ner",
            "--train",
            str(conll),
            "--out",
            str(tmp_path / "ner"),
            "--epochs",
            "1",
            "--dev-fraction",
            "0.25",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["dev"]["n"] == 15 and "test" not in json.loads(r.output)

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(text.replace("\n", " ") for _, text in bbc_rows[80:85]) + "\n", encoding="utf-8")
    r = runner.invoke(app, ["predict", str(tmp_path / "cls"), str(texts), "--out", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(preds) == 5 and all(p["label"] in p["scores"] for p in preds)
    assert "(fp32, " in r.output  # the precision and kernel that ran are said, as `embed` says them
    # --precision (issue 19): auto takes bf16 only where the CPU has it, it passes the gate and measures faster
    r = runner.invoke(
        app, ["predict", str(tmp_path / "cls"), str(texts), "--out", str(tmp_path / "a.jsonl"), "--precision", "auto"]
    )
    assert r.exit_code == 0, r.output
    ran = "bf16" if "(bf16, " in r.output else "fp32"
    assert f"({ran}, " in r.output
    auto = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    if ran == "fp32":  # the same engine as the default: the same predictions to the last digit
        assert auto == preds
    else:  # bf16 GEMMs: scores within bf16 rounding of fp32
        assert all(abs(a["score"] - b["score"]) < 0.02 for a, b in zip(auto, preds))
    from encoderforge.hardware.cpu import CpuInfo
    from encoderforge.inference import precision as prec

    monkeypatch.setattr(prec, "cpu_info", lambda: CpuInfo(model="Test CPU 9000", flags=("avx2", "avx512f")))
    r = runner.invoke(
        app, ["predict", str(tmp_path / "cls"), str(texts), "--out", str(tmp_path / "b.jsonl"), "--precision", "bf16"]
    )
    assert r.exit_code == 1 and "precision=bf16: this CPU (Test CPU 9000) has no AVX512-BF16" in r.output
    assert not (tmp_path / "b.jsonl").exists()  # nothing written
    r = runner.invoke(app, ["predict", str(tmp_path / "ner"), str(texts), "--out", str(tmp_path / "n.jsonl")])
    assert r.exit_code == 0, r.output
    assert all(len(p["tokens"]) == len(p["tags"]) for p in map(json.loads, (tmp_path / "n.jsonl").read_text().splitlines()))

    r = runner.invoke(app, ["eval", str(tmp_path), "--out", str(tmp_path / "board")])
    assert r.exit_code == 0, r.output
    board = json.loads((tmp_path / "board.json").read_text())
    assert {b["run"] for b in board} == {"cls", "ner"}
    assert "### classify" in r.output and "### ner" in (tmp_path / "board.md").read_text()


def test_errors_are_one_line_without_traceback(tiny_model, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,a\n,b\n", encoding="utf-8")
    r = runner.invoke(
        app, ["finetune", "classify", "--model", str(tiny_model), "--train", str(bad), "--out", str(tmp_path / "r")]
    )
    assert r.exit_code == 1 and "bad.csv:3: field 'text' is empty" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["predict", str(tmp_path), "-", "--out", str(tmp_path / "p.jsonl")], input="x\n")
    assert r.exit_code == 1 and "task.json: missing" in r.output
    r = runner.invoke(app, ["eval", str(tmp_path)])
    assert r.exit_code == 1 and "no finished runs" in r.output
