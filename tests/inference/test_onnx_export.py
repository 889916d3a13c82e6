"""ONNX export: dynamic axes really work, parity with our torch encoder, pooled outputs, atomic writes, CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from encoderforge import EncoderforgeError
from encoderforge.cli.export import app
from encoderforge.compression.quantize import int8_fidelity
from encoderforge.inference.onnx_export import (
    encode_padded,
    export_onnx,
    onnx_session,
    run_onnx,
)
from encoderforge.model.checkpoint import load, save
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import pool
from encoderforge.tokenization import load_tokenizer

runner = CliRunner()
torch.set_num_threads(1)


def _padded_batch(B: int, T: int, vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, T) ids with every row a different length (row 0 full, the last one 1 token)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(T, 1, B).round().long()
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    return torch.randint(5, vocab, (B, T), generator=g) * mask, mask


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    torch.manual_seed(0)
    return Encoder(preset("bert-tiny", vocab_size=1000, attention="varlen")).eval()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- tiny model: graph behaviour -------------------------------------------------------------------


def test_tiny_dynamic_axes_and_backend_restored(tiny, tmp_path):
    out = export_onnx(tiny, tmp_path / "tiny.onnx")
    assert tiny.cfg.attention == "varlen" and not tiny.training  # the model's own backend is back
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "sequence"]] * 2
    sess = onnx_session(out)
    for B, T in [(5, 23), (1, 3), (3, 8)]:  # export example was (2, 8)
        ids, mask = _padded_batch(B, T, 1000)
        got = torch.from_numpy(run_onnx(sess, ids, mask))  # (B, T, C)
        with torch.no_grad():
            ref = tiny(ids, mask)
        assert got.shape == (B, T, 128)
        torch.testing.assert_close(got * mask[..., None], ref * mask[..., None], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_tiny_pooled_outputs(tiny, tmp_path, pooling):
    out = export_onnx(tiny, tmp_path / f"{pooling}.onnx", pooling=pooling)
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["pooled"]
    ids, mask = _padded_batch(4, 11, 1000)
    got = torch.from_numpy(run_onnx(onnx_session(out), ids, mask))
    with torch.no_grad():
        ref = pool(tiny(ids, mask), mask, pooling)  # (B, C)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_tiny_int8_is_smaller_and_close(tiny, tmp_path):
    fp32 = export_onnx(tiny, tmp_path / "fp32.onnx", pooling="mean")
    q = export_onnx(tiny, tmp_path / "int8.onnx", pooling="mean", int8=True)
    assert q.stat().st_size < 0.4 * fp32.stat().st_size
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(str(q)).graph.node)
    ids, mask = _padded_batch(6, 16, 1000)
    fid = int8_fidelity(run_onnx(onnx_session(fp32), ids, mask), run_onnx(onnx_session(q), ids, mask))
    assert fid["mean_cosine"] > 0.98
    assert _leftovers(tmp_path) == ["fp32.onnx", "int8.onnx"]  # no temporary files left


def test_failed_export_leaves_nothing(tiny, tmp_path):
    with pytest.raises(Exception):  # torch rejects the opset: a real failure in the middle of the export
        export_onnx(tiny, tmp_path / "bad.onnx", opset=99)
    assert _leftovers(tmp_path) == []
    assert tiny.cfg.attention == "varlen"  # restored even on error


def test_bad_output_paths(tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(EncoderforgeError, match="is a directory"):
        export_onnx(tiny, tmp_path)
    with pytest.raises(EncoderforgeError, match="must end in .onnx"):
        export_onnx(tiny, tmp_path / "model.bin")
    with pytest.raises(EncoderforgeError, match="is a file, so"):
        export_onnx(tiny, tmp_path / "afile" / "m.onnx")
    with pytest.raises(EncoderforgeError, match="pooling"):  # checked before any file is written
        export_onnx(tiny, tmp_path / "m.onnx", pooling="max")  # type: ignore[arg-type]
    assert _leftovers(tmp_path) == ["afile"]


def test_missing_onnx_extra_is_one_clear_error(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what a core install without the 'onnx' extra sees
    with pytest.raises(EncoderforgeError, match=r"onnx.*pip install 'encoderforge\[onnx\]'"):
        export_onnx(tiny, tmp_path / "m.onnx")
    assert _leftovers(tmp_path) == []


# ---- real MiniLM: parity on real text ----------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load(minilm_path).encoder


@pytest.fixture(scope="module")
def real_batch(minilm_path, real_texts):
    ids, mask = encode_padded(load_tokenizer(minilm_path), real_texts, max_length=128)
    assert ids.shape[0] == 18 and ids.shape[1] > 100 and (mask.sum(1) < ids.shape[1]).any()  # padded, not (2, 8)
    return ids, mask


@pytest.fixture(scope="module")
def minilm_onnx(minilm, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        "none": export_onnx(minilm, d / "minilm.onnx"),
        "mean": export_onnx(minilm, d / "minilm-mean.onnx", pooling="mean"),
        "int8": export_onnx(minilm, d / "minilm-mean-int8.onnx", pooling="mean", int8=True),
    }


def test_minilm_hidden_states_match_torch(minilm, minilm_onnx, real_batch):
    ids, mask = real_batch
    got = torch.from_numpy(run_onnx(onnx_session(minilm_onnx["none"]), ids, mask))  # (18, T, 384)
    with torch.no_grad():
        ref = minilm(ids, mask)  # our own varlen backend
    diff = ((got - ref).abs() * mask[..., None]).max().item()
    assert diff <= 1e-4, diff


def test_minilm_mean_pooled_matches_torch(minilm, minilm_onnx, real_batch):
    ids, mask = real_batch
    got = torch.from_numpy(run_onnx(onnx_session(minilm_onnx["mean"]), ids, mask))  # (18, 384)
    with torch.no_grad():
        ref = pool(minilm(ids, mask), mask, "mean")
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_minilm_int8_onnx_fidelity(minilm, minilm_onnx, real_batch):
    ids, mask = real_batch
    with torch.no_grad():
        ref = torch.nn.functional.normalize(pool(minilm(ids, mask), mask, "mean"), dim=-1)
    got = torch.nn.functional.normalize(torch.from_numpy(run_onnx(onnx_session(minilm_onnx["int8"]), ids, mask)), dim=-1)
    fid = int8_fidelity(ref, got)
    assert fid["mean_cosine"] >= 0.99 and fid["min_cosine"] >= 0.95, fid
    assert fid["mean_cosine"] < 0.99999  # it really is quantized
    assert minilm_onnx["int8"].stat().st_size < 0.3 * minilm_onnx["mean"].stat().st_size


# ---- CLI -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(minilm_path, tmp_path_factory) -> Path:
    """A tiny encoderforge checkpoint with MiniLM's tokenizer (so the CLI's parity check runs on real text)."""
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=30522)).eval()
    return save(enc, tmp_path_factory.mktemp("ckpt") / "tiny", tokenizer_dir=minilm_path)


def test_cli_export(tiny_ckpt, tmp_path):
    out = tmp_path / "new" / "m.onnx"  # missing parent directories are created
    r = runner.invoke(app, ["onnx", "--model", str(tiny_ckpt), "--out", str(out), "--pooling", "mean"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == str(out) and out.is_file()
    diff = float(lines[1].split("max |diff| ")[1].split(",")[0])
    assert "on 4 texts" in lines[1] and diff <= 1e-4
    assert f"({out.stat().st_size} bytes)" in lines[2]


def test_cli_export_int8(tiny_ckpt, tmp_path):
    out = tmp_path / "q.onnx"
    r = runner.invoke(app, ["onnx", "--model", str(tiny_ckpt), "--out", str(out), "--int8"])
    assert r.exit_code == 0, r.output
    line = r.stdout.splitlines()[1]
    mean_cos, min_cos = (float(x) for x in line.split("cosine mean ")[1].split(" / min "))
    assert 0.99 < min_cos <= mean_cos <= 1.0
    assert onnx_session(out).get_outputs()[0].name == "last_hidden_state"  # no --pooling: the hidden states, as always
    assert float(line.split("max |diff| ")[1].split(",")[0]) > 1e-4  # int8 really differs from fp32


@pytest.mark.parametrize("case", ["missing_model", "out_is_dir", "out_parent_is_file"])
def test_cli_bad_input(tiny_ckpt, tmp_path, case):
    (tmp_path / "afile").write_text("x")
    model, out, msg = {
        "missing_model": (tmp_path / "nope", tmp_path / "new" / "m.onnx", "no such directory"),  # creates no dir
        "out_is_dir": (tiny_ckpt, tmp_path, "is a directory"),
        "out_parent_is_file": (tiny_ckpt, tmp_path / "afile" / "m.onnx", "is a file, so"),
    }[case]
    r = runner.invoke(app, ["onnx", "--model", str(model), "--out", str(out)])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ") and msg in r.stderr and "Traceback" not in r.stderr
    assert _leftovers(tmp_path) == ["afile"]  # nothing written, no temporary left behind
