"""Engine precision: bf16 GEMMs only on a CPU with native bf16, kept only if the sample embeddings pass the fidelity
gate, "auto" only where bf16 also measures faster; fp32 stays the default."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.hardware.choose import Choice
from encoderforge.hardware.cpu import CpuInfo, cpu_info
from encoderforge.inference import engine as engine_mod
from encoderforge.inference import precision as prec
from encoderforge.inference.cpu_pack import PackedLinear, PackedMLP, packing_available
from encoderforge.inference.engine import Engine
from encoderforge.model import preset
from encoderforge.model.layers import MLP

native = pytest.mark.skipif(
    not (packing_available() and cpu_info().bf16), reason=f"this CPU ({cpu_info().describe()}) has no native bf16"
)


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(prec, "cpu_info", lambda: CpuInfo(model="Test CPU 9000", flags=("avx2", "avx512f")))


def test_default_is_fp32(tiny, tok):
    eng = Engine(tiny, tok, max_length=64)
    assert eng.precision == "fp32" and eng.fidelity is None and "precision" not in eng.choices


def test_unknown_precision_is_a_clear_error(tiny, tok):
    with pytest.raises(EncoderforgeError, match=r"precision='fp8': choose one of fp32, bf16, auto"):
        Engine(tiny, tok, precision="fp8")  # type: ignore[arg-type]


def test_bf16_without_native_bf16_is_a_clear_error(tiny, tok, no_bf16_cpu):
    msg = r"^precision=bf16: this CPU \(Test CPU 9000\) has no AVX512-BF16 or AMX; use precision=fp32 or auto$"
    with pytest.raises(EncoderforgeError, match=msg):
        Engine(tiny, tok, max_length=64, precision="bf16")


def test_auto_without_native_bf16_stays_fp32_silently(tiny, tok, no_bf16_cpu, caplog):
    with caplog.at_level(logging.WARNING):
        eng = Engine(tiny, tok, max_length=64, precision="auto")
    assert (eng.precision, eng.precision_note, eng.fidelity) == ("fp32", "", None)
    assert eng.notes == []
    assert "precision" not in eng.choices and not caplog.records


def test_bf16_needs_packing(tiny, tok):
    with pytest.raises(EncoderforgeError, match="precision=bf16 runs through the packed oneDNN linears; use pack=True"):
        Engine(tiny, tok, max_length=64, precision="bf16", pack=False)


@native
@pytest.mark.parametrize("act", ["gelu", "geglu"])
def test_packed_bf16_mlp_close_to_fp32(act):
    torch.manual_seed(0)
    mlp = MLP(preset("bert-tiny", vocab_size=10, activation=act)).eval()
    x = torch.randn(37, 128)
    with torch.inference_mode():
        ref, got = mlp(x), PackedMLP(mlp, dtype=torch.bfloat16)(x)
    assert got.dtype == torch.float32  # only the GEMMs are bf16: the residual stream stays fp32
    assert float((got - ref).norm() / ref.norm()) < 1e-2


@native
def test_bf16_minilm_passes_the_gate_on_real_texts(minilm_path, real_texts):
    fp32 = Engine.from_pretrained(minilm_path, max_length=256)
    bf16 = Engine.from_pretrained(minilm_path, max_length=256, precision="bf16")
    assert (bf16.precision, bf16.kernel, bf16.precision_note) == ("bf16", "onednn-packed", "")
    qkv = bf16.encoder.layers[0].attn.qkv
    assert isinstance(qkv, PackedLinear) and qkv.dtype == torch.bfloat16
    assert bf16.fidelity is not None and bf16.fidelity.min >= prec.GATE_COSINE
    cos = (fp32.embed(real_texts) * bf16.embed(real_texts)).sum(axis=1)  # both L2-normalized
    assert cos.mean() >= prec.GATE_COSINE and cos.min() >= 0.995, (cos.mean(), cos.min())


@native
def test_bf16_failing_the_gate_falls_back_to_fp32(tiny, tok, monkeypatch, caplog):
    monkeypatch.setattr(prec, "GATE_COSINE", 1.5)  # no model can pass: the fallback path runs
    eng = Engine(tiny, tok, max_length=64, precision="bf16")
    assert eng.precision == "fp32" and isinstance(eng.encoder.layers[0].attn.qkv, (nn.Linear, PackedLinear))
    assert getattr(eng.encoder.layers[0].attn.qkv, "dtype", torch.float32) == torch.float32
    assert "cosine to fp32 mean" in eng.precision_note and "running fp32" in eng.precision_note
    assert eng.notes == [eng.precision_note]  # what predict / embed / bench print
    assert eng.precision_note in caplog.text
    ref = Engine(tiny, tok, max_length=64, pack=False).embed(["a sentence", "another"])
    assert np.abs(eng.embed(["a sentence", "another"]) - ref).max() <= 1e-5  # really the fp32 model


@native
@pytest.mark.parametrize("picked", ["fp32", "bf16"])
def test_auto_takes_bf16_only_when_it_measures_faster(tiny, tok, monkeypatch, picked):
    calls = []

    def fake_choose(shapes, fp32_kernel, **kw):
        calls.append((shapes, fp32_kernel))
        return Choice("infer-precision", picked, "measured")

    monkeypatch.setattr(engine_mod, "choose_precision", fake_choose)
    eng = Engine(tiny, tok, max_length=64, precision="auto")
    assert calls == [([(128, 128), (128, 384), (128, 512), (512, 128)], eng.choices["linear"].picked)]
    assert eng.precision == picked and (eng.fidelity is not None) == (picked == "bf16")


def test_fidelity_and_samples():
    texts = prec.sample_texts()
    assert len(texts) >= 8 and all(t.strip() for t in texts)  # shipped with the package
    a = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    f = prec.fidelity(a, np.array([[1.0, 0.0], [1.0, 1.0]], np.float32))
    assert f.min == pytest.approx(2**-0.5) and f.mean == pytest.approx((1 + 2**-0.5) / 2) and not f.passed


def test_embed_cli_precision(minilm_path, tmp_path, no_bf16_cpu):
    from typer.testing import CliRunner

    from encoderforge.cli.app import app

    src = tmp_path / "t.txt"
    src.write_text("first text\nsecond text\n", encoding="utf-8")
    args = ["embed", str(src), "--out", str(tmp_path / "v.npy"), "--model", str(minilm_path), "--precision"]
    r = CliRunner().invoke(app, [*args, "auto"])
    assert r.exit_code == 0 and "(fp32, " in r.output, r.output  # auto on a CPU without bf16: fp32, said so
    r = CliRunner().invoke(app, [*args, "bf16"])
    assert r.exit_code == 1 and "error: precision=bf16: this CPU (Test CPU 9000) has no AVX512-BF16" in r.stderr
