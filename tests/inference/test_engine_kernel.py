"""The engine's fp32 linear kernel is chosen by a checked measurement (hardware.choose), can be forced by
ENCODERFORGE_INFER_LINEAR, falls back when the forced one is wrong, and is cached per machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.hardware.cache import CACHE_ENV
from encoderforge.inference import kernel_choice
from encoderforge.inference.cpu_pack import PackedLinear, packing_available
from encoderforge.inference.engine import Engine
from encoderforge.inference.kernel_choice import LINEAR_ENV, GemmSet, linear_shapes

pytestmark = pytest.mark.skipif(not packing_available(), reason="torch built without oneDNN: nothing to choose")
TEXTS = ["a short sentence", "the licensee shall indemnify the licensor", "ok"]


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A fresh, empty choice cache for this test (the session's may already hold these shapes)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))


def _packed(eng: Engine) -> bool:
    return isinstance(eng.encoder.layers[0].attn.qkv, PackedLinear)


def test_shapes_are_the_models_linears(tiny):
    assert linear_shapes(tiny) == [(128, 128), (128, 384), (128, 512), (512, 128)]


def test_measured_choice_is_cached(tiny, tok, own_cache):
    first = Engine(tiny, tok, max_length=64)
    assert first.choices["linear"].source == "measured"
    assert set(first.choices["linear"].ms) == {"onednn-packed", "torch"}  # both passed the check and were timed
    second = Engine(tiny, tok, max_length=64)
    assert second.choices["linear"].source == "cache"
    assert second.kernel == first.kernel == first.choices["linear"].picked
    assert _packed(second) == (second.kernel == "onednn-packed")


@pytest.mark.parametrize("value,kernel", [("torch", "torch"), ("onednn", "onednn-packed"), ("AUTO", None)])
def test_env_forces_the_kernel(tiny, tok, monkeypatch, own_cache, value, kernel):
    monkeypatch.setenv(LINEAR_ENV, value)
    eng = Engine(tiny, tok, max_length=64)
    assert eng.choices["linear"].source == ("forced" if kernel else "measured")
    if kernel:
        assert eng.kernel == kernel and _packed(eng) == (kernel == "onednn-packed")
    ref = Engine(tiny, tok, max_length=64, pack=False).embed(TEXTS)
    assert np.abs(eng.embed(TEXTS) - ref).max() <= 1e-5  # every kernel computes the same function


def test_forced_kernel_that_fails_its_check_falls_back(tiny, tok, monkeypatch, own_cache, caplog):
    class Broken(nn.Module):  # a kernel that is fast and wrong: 1% off everywhere
        def __init__(self, lin: nn.Linear):
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * 1.01

    monkeypatch.setitem(kernel_choice.FP32_KERNELS, "onednn-packed", Broken)
    monkeypatch.setenv(LINEAR_ENV, "onednn")
    eng = Engine(tiny, tok, max_length=64)
    choice = eng.choices["linear"]
    assert (eng.kernel, choice.source) == ("torch", "fallback") and not _packed(eng)
    assert "failed its numerical check" in eng.kernel_note and "onednn-packed" in choice.rejected
    assert LINEAR_ENV in caplog.text


@pytest.mark.parametrize("value", ["mkl", "oneDNN-fast", "1"])
def test_unknown_env_value_is_a_one_line_error(tiny, tok, monkeypatch, value):
    monkeypatch.setenv(LINEAR_ENV, value)
    with pytest.raises(EncoderforgeError, match=rf"{LINEAR_ENV}=.* not a known value; set it to one of auto, onednn, torch$"):
        Engine(tiny, tok, max_length=64)


def test_pack_false_swaps_nothing_and_measures_nothing(tiny, tok, monkeypatch):
    monkeypatch.setenv(LINEAR_ENV, "onednn")  # ignored: no swap at all
    eng = Engine(tiny, tok, max_length=64, pack=False)
    assert (eng.kernel, eng.choices, eng.precision) == ("torch", {}, "fp32")
    assert eng.encoder.layers[0].attn.qkv.weight is tiny.layers[0].attn.qkv.weight


def test_gemm_set_checks_sampled_rows_of_full_gemms():
    gs = GemmSet([(16, 8), (8, 24)], tokens=64)
    out = gs.candidate(kernel_choice.FP32_KERNELS["torch"])()
    assert out.shape == gs.reference().shape == ((64 // 32) * (8 + 24),)
    torch.testing.assert_close(out.double(), gs.reference(), rtol=1e-5, atol=1e-5)
    assert all(x.shape == (64, k) for x, (k, _) in zip(gs.inputs(), gs.shapes))
