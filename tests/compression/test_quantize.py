"""int8 quantization: torch Int8Linear / quantize_dynamic, ONNX Runtime quantize_onnx, and int8_fidelity."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.quantize import (
    Int8Linear,
    cpu_has_vnni,
    int8_fidelity,
    quantize_dynamic,
    quantize_onnx,
)
from encoderforge.inference.onnx_export import encode_padded, export_onnx
from encoderforge.model.checkpoint import load
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import pool
from encoderforge.tokenization import load_tokenizer

torch.set_num_threads(1)


@pytest.mark.parametrize("reduce_range", [True, False])
def test_int8_linear_matches_linear_any_leading_shape(reduce_range):
    if not reduce_range and not cpu_has_vnni():
        pytest.skip("full-range int8 weights saturate VPMADDUBSW without AVX512-VNNI (tested below)")
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    q = Int8Linear(lin, reduce_range=reduce_range)
    for shape in [(3, 7, 64), (11, 64)]:  # padded (B, T, C) and unpadded (N, C)
        x = torch.randn(shape)
        ref, got = lin(x).detach(), q(x)
        assert got.shape == ref.shape
        rel = ((got - ref).norm() / ref.norm()).item()
        assert 1e-5 < rel < 0.02, rel  # quantized (not exact), yet close


def test_default_range_never_saturates_on_this_cpu():
    """The default (7-bit weights without VNNI) stays close on a random layer whose inputs fill the 8-bit range;
    full-range weights on a CPU without VNNI are the case the default avoids (a 20% error here, on AVX2)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    x = torch.randn(11, 64)
    ref = lin(x).detach()
    layer = quantize_dynamic(nn.Sequential(lin))[0]
    assert layer.reduce_range == (not cpu_has_vnni())
    assert ((layer(x) - ref).norm() / ref.norm()).item() < 0.02
    if not cpu_has_vnni():
        assert ((Int8Linear(lin, reduce_range=False)(x) - ref).norm() / ref.norm()).item() > 0.05


def test_quantize_dynamic_replaces_every_linear_and_keeps_the_original():
    enc = Encoder(preset("bert-tiny", vocab_size=500)).eval()
    q = quantize_dynamic(enc)
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 2 * 4 + 1  # qkv, out, fc1, fc2 per layer + pooler
    assert isinstance(enc.layers[0].attn.qkv, nn.Linear)  # the fp32 model is untouched


def test_quantized_encoder_works_with_every_backend():
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=500, attention="varlen")).eval()
    q = quantize_dynamic(enc)
    lengths = torch.tensor([9, 4, 1])
    mask = (torch.arange(9)[None, :] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(5, 500, (3, 9)) * mask
    with torch.no_grad():
        ref = pool(enc(ids, mask), mask)
        outs = {b: pool(q.set_attention(b)(ids, mask), mask) for b in ("varlen", "sdpa", "eager")}
    # sdpa and eager see the same padded (B, T, C) activations, hence the same int8 scales.
    torch.testing.assert_close(outs["sdpa"], outs["eager"], atol=1e-4, rtol=0)
    # varlen quantizes activations over the real tokens only (no padding rows), so its scales differ slightly.
    assert int8_fidelity(outs["varlen"], outs["eager"])["min_cosine"] > 0.999
    for b, out in outs.items():
        assert int8_fidelity(ref, out)["min_cosine"] > 0.99, b


def test_minilm_torch_int8_fidelity(minilm_path, real_texts):
    enc = load(minilm_path).encoder  # varlen backend
    ids, mask = encode_padded(load_tokenizer(minilm_path), real_texts, max_length=128)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(pool(enc(ids, mask), mask), dim=-1)
        got = torch.nn.functional.normalize(pool(quantize_dynamic(enc)(ids, mask), mask), dim=-1)
    fid = int8_fidelity(ref, got)
    assert 0.99 <= fid["mean_cosine"] < 0.99999 and fid["min_cosine"] >= 0.95, fid


def test_quantize_onnx_writes_int8_atomically(tmp_path):
    enc = Encoder(preset("bert-tiny", vocab_size=500)).eval()
    src = export_onnx(enc, tmp_path / "fp32.onnx")
    dst = quantize_onnx(src, tmp_path / "int8.onnx")
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert dst.stat().st_size < 0.4 * src.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]
    with pytest.raises(EncoderforgeError, match="no such ONNX file"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx")
    with pytest.raises(EncoderforgeError, match="weight_type"):
        quantize_onnx(src, tmp_path / "x.onnx", weight_type="QInt4")
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_onnx_names_the_extra_it_needs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # as if onnxruntime were not installed
    with pytest.raises(EncoderforgeError, match=r"onnxruntime.*pip install 'encoderforge\[onnx\]'"):
        quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")


def test_int8_fidelity_values():
    a = np.eye(3, dtype=np.float32)
    assert int8_fidelity(a, 2 * a) == {"mean_cosine": pytest.approx(1.0), "min_cosine": pytest.approx(1.0), "n": 3}
    rotated = int8_fidelity(a, a[[1, 2, 0]])
    assert rotated["mean_cosine"] == pytest.approx(0.0) and rotated["min_cosine"] == pytest.approx(0.0)
    mixed = int8_fidelity(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert mixed["min_cosine"] == pytest.approx(2**-0.5) and mixed["mean_cosine"] == pytest.approx((1 + 2**-0.5) / 2)
    assert int8_fidelity(a, np.zeros_like(a))["mean_cosine"] == 0.0  # a zero vector is not "similar"
    with pytest.raises(EncoderforgeError, match="one shape"):
        int8_fidelity(a, a[:2])
