"""Every CLI command against a table of bad inputs: non-zero exit, a one-line `error:` naming the path or flag,
no traceback, and every input file byte-identical afterwards. A new command joins by adding rows to CASES."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from encoderforge.cli.app import app

runner = CliRunner()


@pytest.fixture
def ws(tmp_path, minilm_path):
    """A workspace of inputs: good and bad text files, a labelled CSV, a small model copy, a non-run directory."""
    d = tmp_path / "ws"
    d.mkdir()
    (d / "texts.txt").write_text("The licensee may copy the work.\nNo warranty is given.\n", encoding="utf-8")
    (d / "empty.txt").write_text("", encoding="utf-8")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (d / "latin1.txt").write_bytes("caf\xe9 license\n".encode("latin-1"))
    (d / "train.csv").write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(20)))
    (d / "nan.csv").write_text("text,label\nfirst text,0.5\nsecond text,nan\nthird,1\n")
    (d / "a_dir").mkdir()
    (d / "mine").mkdir()
    (d / "mine" / "notes.txt").write_text("a user's own files\n")
    shutil.copy(d / "train.csv", d / "mine" / "train.csv")
    model = d / "model"
    model.mkdir()
    for f in minilm_path.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".safetensors"):
            shutil.copy(f, model / f.name)
    return d


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


W = "{ws}"
CASES = [  # (id, argv with {ws} for the workspace, substring the one-line error must hold)
    ("embed-missing", ["embed", f"{W}/nope.txt", "--out", f"{W}/v.npy"], "nope.txt"),
    ("embed-binary", ["embed", f"{W}/binary.bin", "--out", f"{W}/v.npy", "--model", f"{W}/model"], "not valid UTF-8"),
    ("embed-latin1", ["embed", f"{W}/latin1.txt", "--out", f"{W}/v.npy", "--model", f"{W}/model"], "latin1.txt: line 1"),
    ("embed-dir-for-file", ["embed", f"{W}/a_dir", "--out", f"{W}/v.npy"], "a_dir"),
    ("embed-out-is-input", ["embed", f"{W}/texts.txt", "--out", f"{W}/texts.txt", "--model", f"{W}/model"], "--out is the input"),
    ("embed-out-is-dir", ["embed", f"{W}/texts.txt", "--out", f"{W}/a_dir", "--model", f"{W}/model"], "is a directory"),
    (
        "embed-out-in-model",
        ["embed", f"{W}/texts.txt", "--out", f"{W}/model/v.npy", "--model", f"{W}/model"],
        "inside the input directory",
    ),
    ("embed-out-under-file", ["embed", f"{W}/texts.txt", "--out", f"{W}/texts.txt/v.npy", "--model", f"{W}/model"], "texts.txt"),
    ("embed-max-length", ["embed", f"{W}/texts.txt", "--out", f"{W}/v.npy", "--max-length", "-1"], "--max-length"),
    ("neighbors-binary", ["neighbors", f"{W}/texts.txt", f"{W}/binary.bin"], "binary.bin"),
    ("predict-not-a-run", ["predict", f"{W}/a_dir", f"{W}/texts.txt", "--out", f"{W}/p.jsonl"], "task.json"),
    ("predict-out-is-input", ["predict", f"{W}/a_dir", f"{W}/texts.txt", "--out", f"{W}/texts.txt"], "--out is the input"),
    ("convert-missing", ["convert", f"{W}/nope", f"{W}/out"], "nope"),
    ("convert-out-is-src", ["convert", f"{W}/model", f"{W}/model"], "is the input"),
    ("convert-out-is-file", ["convert", f"{W}/model", f"{W}/texts.txt"], "is a file"),
    ("export-opset", ["export", "onnx", "--model", f"{W}/model", "--out", f"{W}/m.onnx", "--opset", "0"], "opset"),
    ("tokenizer-train-empty", ["tokenizer", "train", f"{W}/empty.txt", "--vocab-size", "100", "--out", f"{W}/tok"], "empty.txt"),
    (
        "tokenizer-train-binary",
        ["tokenizer", "train", f"{W}/binary.bin", "--vocab-size", "100", "--out", f"{W}/tok"],
        "binary.bin",
    ),
    (
        "data-prepare-out-in-corpus",
        ["data", "prepare", f"{W}/mine", "--tokenizer", f"{W}/model", "--out", f"{W}/mine/shards"],
        "mine",
    ),
    ("pretrain-missing-config", ["pretrain", "--config", f"{W}/nope.yaml"], "nope.yaml"),
    ("pretrain-dir-config", ["pretrain", "--config", f"{W}/a_dir"], "a_dir"),
    (
        "finetune-missing-train",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/nope.csv", "--out", f"{W}/run"],
        "nope.csv",
    ),
    (
        "finetune-binary-train",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/binary.bin", "--out", f"{W}/run"],
        "binary.bin",
    ),
    (
        "finetune-nan-label",
        ["finetune", "regress", "--model", f"{W}/model", "--train", f"{W}/nan.csv", "--out", f"{W}/run"],
        "nan.csv:3",
    ),
    (
        "finetune-overwrite-user-dir",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/mine/train.csv", "--out", f"{W}/mine", "--overwrite"],
        "mine",
    ),
    (
        "finetune-out-non-run",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/train.csv", "--out", f"{W}/mine"],
        "not an encoderforge run",
    ),
    (
        "finetune-out-is-model",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/train.csv", "--out", f"{W}/model"],
        "model",
    ),
    (
        "finetune-out-in-model",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/train.csv", "--out", f"{W}/model/run"],
        "inside the input directory",
    ),
    (
        "finetune-epochs",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/train.csv", "--out", f"{W}/run", "--epochs", "-1"],
        "--epochs",
    ),
    (
        "finetune-threads",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/train.csv", "--out", f"{W}/run", "--threads", "-2"],
        "--threads",
    ),
    (
        "finetune-max-length",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/train.csv", "--out", f"{W}/run", "--max-length", "-5"],
        "--max-length",
    ),
    (
        "finetune-lr-nan",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/train.csv", "--out", f"{W}/run", "--lr", "nan"],
        "--lr 'nan'",
    ),
    (
        "finetune-lr-word",
        ["finetune", "classify", "--model", f"{W}/model", "--train", f"{W}/train.csv", "--out", f"{W}/run", "--lr", "fast"],
        "or auto",
    ),
    ("eval-no-runs", ["eval", f"{W}/a_dir", "--out", f"{W}/board"], "no finished runs"),
    ("run-missing", ["run", f"{W}/nope.yaml"], "nope.yaml"),
    ("run-dir-for-file", ["run", f"{W}/a_dir"], "a_dir"),
    ("run-binary", ["run", f"{W}/binary.bin"], "binary.bin"),
    ("run-not-a-pipeline", ["run", f"{W}/texts.txt", "--out", f"{W}/mine"], "texts.txt"),
    ("run-out-user-dir", ["quickstart", "--smoke", "--out", f"{W}/mine"], "not a pipeline run"),
    ("report-not-a-run", ["report", f"{W}/a_dir"], "a_dir"),
    ("quickstart-unknown-key", ["quickstart", "--smoke", "--out", f"{W}/qs", "--set", "finetune.train.lrr=1"], "lrr"),
    ("bench-infer-threads", ["bench", "infer", "--threads", "-2", "--out", f"{W}/b"], "--threads"),
    ("bench-train-steps", ["bench", "train", "--steps", "0", "--out", f"{W}/b"], "--steps"),
    ("compress-no-recipe", ["compress", f"{W}/mine", "--recipe", f"{W}/nope.yaml", "--out", f"{W}/c"], "nope.yaml: no such file"),
    ("compress-bad-recipe", ["compress", f"{W}/mine", "--recipe", f"{W}/texts.txt", "--out", f"{W}/c"], "texts.txt"),
    (
        "compress-teacher-not-a-run",
        ["compress", f"{W}/mine", "--recipe", "configs/compress-r8.yaml", "--out", f"{W}/c"],
        "mine/task.json: missing",
    ),
]


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error_and_inputs_are_untouched(ws, argv, needle):
    before = digests(ws)
    r = runner.invoke(app, [a.replace(W, str(ws)) for a in argv])
    assert r.exit_code != 0, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], r.output
    assert digests(ws) == before  # every input byte-identical, nothing new left looking complete
