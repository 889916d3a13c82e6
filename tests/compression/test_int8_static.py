"""Static int8 in our engine (issue 16): calibrated input grids, oneDNN int8 GEMMs, the GELU MLP int8 end to end."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.int8_linear import Int8Linear, int8_weight
from encoderforge.compression.int8_static import (
    StaticInt8Linear,
    StaticInt8MLP,
    calibrate_ranges,
    quantize_static_engine,
    static_engine_available,
    static_ranges,
    uint8_codes,
    uint8_grid,
)
from encoderforge.compression.int8_store import load_int8, save_int8
from encoderforge.compression.static_int8 import MIN_MEAN_COSINE as STATIC_MIN_MEAN_COSINE
from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder

pytestmark = pytest.mark.skipif(not static_engine_available(), reason="this torch has no oneDNN int8 linear")


def direct(lin: nn.Linear, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """What the static layer computes, written out: x on the clipped uint8 grid, weights on their int8 codes, fp64."""
    scale, zero = uint8_grid(lo, hi)
    xq = (torch.clamp(torch.round(x.double() / scale) + zero, 0, 255) - zero) * scale
    qw = int8_weight(lin.weight.detach(), reduce_range=False)
    w = qw.int_repr().double() * qw.q_per_channel_scales()[:, None]
    return (xq @ w.T + lin.bias.detach().double()).float()


def test_uint8_codes_equal_round_and_clip():
    assert uint8_grid(-1.0, 3.0) == (4 / 255, 64)  # round(1 / (4 / 255)) = round(63.75)
    assert uint8_grid(0.5, 2.0) == (2 / 255, 0)  # the grid always holds an exact 0
    with pytest.raises(EncoderforgeError, match="not finite"):
        uint8_grid(float("nan"), 1.0)
    x = torch.randn(64, 48) * 3
    scale, zero = uint8_grid(-2.0, 5.0)
    want = torch.clamp(torch.round(x / scale) + zero, 0, 255).to(torch.uint8)
    got = uint8_codes(x, scale, zero)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert (got.int() - want.int()).abs().max() <= 1  # round-half ties may differ by one code; nothing else
    assert (got != want).float().mean() < 0.01
    assert torch.equal(uint8_codes(x.T.contiguous().T, scale, zero), got)  # a non-contiguous input: the same codes


def test_static_linear_equals_the_direct_computation_and_clips_outside_its_range():
    torch.manual_seed(0)
    lin = nn.Linear(96, 160)
    x = torch.randn(3, 40, 96)  # any leading shape
    lo, hi = float(x.min()), float(x.max())
    layer = StaticInt8Linear(lin, (lo, hi))
    with torch.inference_mode():
        y = layer(x)
        want = direct(lin, x.reshape(-1, 96), lo, hi).reshape(3, 40, 160)
        torch.testing.assert_close(y, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
        ref = lin(x)
        assert float((y - ref).norm() / ref.norm()) < 0.02  # 8-bit error against fp32
        clipped = layer(x * 4)  # far outside the calibrated range: clipped to it, as the grid says
        torch.testing.assert_close(clipped, direct(lin, x.reshape(-1, 96) * 4, lo, hi).reshape(3, 40, 160), rtol=1e-3, atol=1e-2)


def test_fused_mlp_writes_uint8_between_its_gemms_and_matches_the_mlp():
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny")).eval()
    ids = torch.randint(5, 1000, (4, 24))
    ranges = calibrate_ranges(enc, lambda m: m(ids, torch.ones_like(ids)))
    fused = quantize_static_engine(enc, ranges)
    plain = quantize_static_engine(enc, ranges, fuse_mlp=False)
    mlps = [m for m in fused.modules() if isinstance(m, StaticInt8MLP)]
    assert len(mlps) == enc.cfg.num_layers
    assert mlps[0].fc1.post_op == "gelu" and mlps[0].fc1.out_range == ranges["layers.0.mlp.fc2"]
    with torch.inference_mode():
        x = torch.randn(30, enc.cfg.hidden_size)
        assert mlps[0].fc1(x).dtype == torch.uint8
        ref = enc.layers[0].mlp(x)
        for m in (mlps[0], plain.layers[0].mlp):
            assert float((m(x) - ref).norm() / ref.norm()) < 0.03
        a, b, r = (m(ids, torch.ones_like(ids)) for m in (fused, plain, enc))
        cos = nn.functional.cosine_similarity(a.flatten(0, 1), r.flatten(0, 1), dim=-1)
        assert cos.mean() > 0.99, cos.mean()
        assert float((a - b).norm() / b.norm()) < 0.02  # fusing changes rounding only


def test_calibration_records_each_linear_input_range_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Linear(4, 2))
    xs = [torch.randn(5, 8), torch.randn(7, 8) * 3]
    ranges = calibrate_ranges(net, lambda m: [m[:3](x) for x in xs])  # the last Linear never runs
    allx = torch.cat(xs)
    h = torch.relu(net[0](allx)).detach()
    assert ranges["0"] == pytest.approx((float(allx.min()), float(allx.max())))
    assert ranges["2"] == pytest.approx((float(h.min()), float(h.max())))
    assert "3" not in ranges
    assert not net[0]._forward_pre_hooks  # hooks removed
    q = quantize_static_engine(net, ranges)
    assert isinstance(q[0], StaticInt8Linear) and isinstance(q[3], nn.Linear)  # never calibrated: stays fp32
    assert isinstance(net[0], nn.Linear)  # the original is not modified
    assert static_ranges(q) == {"0": ranges["0"], "2": ranges["2"]}
    twin = copy.deepcopy(q)  # the packed oneDNN weight is shared, not copied (it has no storage)
    with torch.inference_mode():
        assert torch.equal(twin(allx), q(allx))


def test_keep_leaves_named_linears_fp32_and_unfused():
    enc = Encoder(preset("bert-tiny")).eval()
    ids = torch.randint(5, 1000, (2, 12))
    q = quantize_static_engine(enc, calibrate_ranges(enc, lambda m: m(ids, torch.ones_like(ids))), keep=("fc1",))
    assert type(q.layers[0].mlp.fc1) is nn.Linear and isinstance(q.layers[0].mlp.fc2, StaticInt8Linear)
    assert not any(isinstance(m, StaticInt8MLP) for m in q.modules())


def test_bad_ranges_fail_clearly(tmp_path):
    enc = Encoder(preset("bert-tiny")).eval()
    with pytest.raises(EncoderforgeError, match="no Linear of this model"):
        quantize_static_engine(enc, {"layers.9.mlp.fc1": (0.0, 1.0)})
    with pytest.raises(EncoderforgeError, match="no Linear of this model"):
        save_int8(enc, tmp_path / "s.safetensors", reduce_range=False, static={"nope": (0.0, 1.0)})
    assert not (tmp_path / "s.safetensors").exists()
    with pytest.raises(EncoderforgeError, match=r"pack=False"):  # e.g. a packed Engine ran copies of the Linears
        calibrate_ranges(enc, lambda m: None)
    with pytest.raises(EncoderforgeError, match="ran no Linear"):
        calibrate_ranges(nn.Sequential(nn.ReLU()), lambda m: None)


def test_a_linear_whose_inputs_were_all_zero_stays_fp32():
    net = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    q = quantize_static_engine(net, {"0": (0.0, 0.0), "1": (-1.0, 1.0)})
    assert type(q[0]) is nn.Linear and isinstance(q[1], StaticInt8Linear)


def test_minilm_static_file_round_trip_and_fidelity_on_real_texts(minilm_path, real_texts, tmp_path):
    """The real MiniLM: the static int8 file loads back to the very model quantized in memory, and keeps dynamic
    int8's cosine to fp32 on real texts (calibrated on other real texts)."""
    from encoderforge.compression.quantize import int8_fidelity, quantize_dynamic
    from encoderforge.inference.engine import Engine
    from encoderforge.tokenization import load_tokenizer

    enc = checkpoint.load(minilm_path).encoder.eval()
    tok = load_tokenizer(minilm_path)
    cal, held = real_texts[::2], real_texts[1::2]

    def embed(model, texts):
        return Engine(model, tok, pack=False, max_length=128).embed(texts)

    ranges = calibrate_ranges(enc, lambda m: embed(m, cal))
    assert "pooler.dense" not in ranges  # mean pooling never runs it
    memory = quantize_static_engine(enc, ranges)
    loaded = load_int8(save_int8(enc, tmp_path / "s.safetensors", reduce_range=False, static=ranges))
    assert sum(isinstance(m, StaticInt8MLP) for m in loaded.modules()) == 6
    pairs = [(a, b) for a, b in zip(memory.modules(), loaded.modules()) if isinstance(a, StaticInt8Linear)]
    assert len(pairs) == 6 * 4
    with torch.inference_mode():
        for a, b in pairs:  # the same codes and grids (the file stores the codes dynamic int8 uses)
            assert isinstance(b, StaticInt8Linear) and (a.x_range, a.out_range, a.post_op) == (b.x_range, b.out_range, b.post_op)
            x = torch.randn(20, a.in_features)
            torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)
    ref, b = embed(enc, held), embed(loaded, held)
    static, dynamic = int8_fidelity(ref, b), int8_fidelity(ref, embed(quantize_dynamic(enc, reduce_range=False), held))
    assert static["mean_cosine"] >= STATIC_MIN_MEAN_COSINE and static["mean_cosine"] > dynamic["mean_cosine"] - 0.005, (
        static,
        dynamic,
    )
    assert isinstance(loaded.pooler.dense, Int8Linear)  # no range (mean pooling never ran it): dynamic int8 from the file


def test_static_file_on_a_cpu_without_vnni_or_without_the_onednn_op(minilm_path, real_texts, tmp_path, monkeypatch):
    """A file saved with 8-bit weights on a VNNI CPU loads on a CPU without VNNI as 7-bit codes (u8 x s8 pair sums
    would saturate int16 there); on a torch without a working oneDNN int8 linear it runs as dynamic int8."""
    import encoderforge.compression.int8_store as store
    from encoderforge.hardware.cpu import cpu_info

    enc = checkpoint.load(minilm_path).encoder.eval()
    ids = torch.randint(1000, 5000, (2, 16))
    ranges = calibrate_ranges(enc, lambda m: m(ids, torch.ones_like(ids)))
    path = save_int8(enc, tmp_path / "s.safetensors", reduce_range=False, static=ranges)
    avx2_only = dataclasses.replace(cpu_info(), flags=("avx2",))
    monkeypatch.setattr(store, "cpu_info", lambda: avx2_only)
    seven = load_int8(path)
    layers = [m for m in seven.modules() if isinstance(m, StaticInt8Linear)]
    assert layers and all(m.reduce_range for m in layers)
    x = torch.randn(10, 384)
    lin = enc.layers[0].attn.qkv
    with torch.inference_mode():
        got, want = seven.layers[0].attn.qkv(x), lin(x)
    assert float((got - want).norm() / want.norm()) < 0.05  # 7-bit weights: coarser, not broken
    monkeypatch.undo()
    monkeypatch.setattr(store, "static_engine_available", lambda: False)
    dyn = load_int8(path)
    assert not any(isinstance(m, StaticInt8Linear) for m in dyn.modules())
    assert sum(isinstance(m, Int8Linear) for m in dyn.modules()) == 6 * 4 + 1
