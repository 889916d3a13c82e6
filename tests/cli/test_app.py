"""The main CLI: embed equals sentence-transformers; convert; bad input is one line, exit 1, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from encoderforge.cli.app import app

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "embed" in r.output and "convert" in r.output


def test_embed_equals_sentence_transformers(minilm_path, real_texts, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    texts = [t.replace("\n", " ") for t in real_texts]
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts), encoding="utf-8")
    r = runner.invoke(app, ["embed", str(src), "--out", str(tmp_path / "v.npy"), "--model", str(minilm_path)])
    assert r.exit_code == 0, r.output
    ours = np.load(tmp_path / "v.npy")
    model = st.SentenceTransformer(str(minilm_path), device="cpu")
    ref = model.encode(texts, normalize_embeddings=True, batch_size=8)
    assert model.max_seq_length == 256  # same truncation as our default --max-length
    cos = (ours * ref).sum(axis=1)
    assert ours.shape == ref.shape and cos.min() >= 0.9999, cos.min()


def test_embed_jsonl_from_stdin(tmp_path):
    out = tmp_path / "v.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "encoderforge.cli.app", "embed", "-", "--out", str(out), "--pooling", "cls"],
        input="first text\nsecond text\n",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["text"] for row in rows] == ["first text", "second text"]
    assert len(rows[0]["vector"]) == 384 and abs(np.linalg.norm(rows[0]["vector"]) - 1) < 1e-5


def test_convert_roundtrip(minilm_path, tmp_path):
    r = runner.invoke(app, ["convert", str(minilm_path), str(tmp_path / "ours")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["format"] == "encoderforge"
    r = runner.invoke(app, ["convert", str(tmp_path / "ours"), str(tmp_path / "hf"), "--to", "hf"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "bert"
    r = runner.invoke(app, ["convert", str(minilm_path), str(tmp_path / "ours")])
    assert r.exit_code == 1 and "already exists; pass --overwrite" in r.output


def _cli(*args, stdin=None):
    """Run the real CLI in a subprocess: what a user sees, tracebacks included."""
    return subprocess.run([sys.executable, "-m", "encoderforge.cli.app", *args], capture_output=True, text=True, input=stdin)


@pytest.mark.parametrize("case", ["missing_dir", "bad_arch", "corrupt", "non_utf8"])
def test_bad_input_is_one_line_no_traceback(case, minilm_path, tmp_path):
    import shutil

    texts = tmp_path / "t.txt"
    texts.write_text("fine\n", encoding="utf-8")
    model = tmp_path / "m"
    if case == "missing_dir":
        expect = f"{model}: no such directory"
    elif case == "bad_arch":
        shutil.copytree(minilm_path, model)
        (model / "config.json").write_text(json.dumps({"model_type": "roberta"}))
        expect = f"{model / 'config.json'}: model_type 'roberta' is not supported"
    elif case == "corrupt":
        shutil.copytree(minilm_path, model)
        (model / "model.safetensors").write_bytes(b"\x00" * 100)
        expect = f"{model / 'model.safetensors'}: corrupt or truncated"
    else:
        model = minilm_path
        texts.write_bytes("ok\ncaf\xe9 latin-1\n".encode("utf-8")[:3] + b"caf\xe9 latin-1\n")
        expect = f"{texts}: line 2: not valid UTF-8"
    out = tmp_path / "v.npy"
    r = _cli("embed", str(texts), "--out", str(out), "--model", str(model))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    assert not out.exists() and not list(tmp_path.glob(".v.npy.tmp-*"))


def test_quickstart_commands(tmp_path):
    """The README's main job: embed the bundled sample, then nearest neighbours (medical next to medical)."""
    from pathlib import Path

    import encoderforge

    sample = Path(encoderforge.__file__).parent / "samples" / "quickstart.txt"
    out = tmp_path / "v.npy"
    r = runner.invoke(app, ["embed", str(sample), "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["neighbors", str(sample), str(out)])
    assert r.exit_code == 0, r.output
    pairs = r.output.split("\n")
    refund = next(i for i, line in enumerate(pairs) if "I'd like a refund" in line and "->" not in line)
    assert "order arrived" in pairs[refund + 1]
