"""torch's int8 kernel library chosen by measurement (issue 19): both engines checked against fp32, the faster one
used by quantize_dynamic, an override obeyed, a broken engine refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression import int8_engine
from encoderforge.compression.int8_engine import ENGINE_ENV, int8_engine_choice
from encoderforge.compression.quantize import Int8Linear, cpu_has_vnni, quantize_dynamic


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCODERFORGE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(ENGINE_ENV, raising=False)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))


def test_both_engines_checked_and_the_faster_one_quantizes():
    model = _model()
    rr = not cpu_has_vnni()  # the product's default: 8-bit weights saturate int16 pair sums without VNNI
    c = int8_engine_choice(model, reduce_range=rr)
    assert set(c.errors) == {"x86", "onednn"} and all(e < 0.03 for e in c.errors.values())
    assert c.picked == min(c.ms, key=c.ms.__getitem__)
    q = quantize_dynamic(model, reduce_range=rr)
    assert {m.engine for m in q.modules() if isinstance(m, Int8Linear)} == {c.picked}
    x = torch.randn(16, 64)
    with torch.inference_mode():
        err = (q(x) - model(x)).norm() / model(x).norm()
    assert err < 0.03


def test_a_cache_hit_builds_and_quantizes_nothing(monkeypatch):
    model = _model()
    first = int8_engine_choice(model, reduce_range=False)
    monkeypatch.setattr(int8_engine, "Int8Linear", lambda *a, **k: pytest.fail("packed int8 weights on a cache hit"))
    monkeypatch.setattr(int8_engine.torch, "randn", lambda *a, **k: pytest.fail("made inputs on a cache hit"))
    again = int8_engine_choice(model, reduce_range=False)
    assert (again.source, again.picked) == ("cache", first.picked)


@pytest.mark.parametrize("engine", ["x86", "onednn"])
def test_each_engine_gives_the_same_int8_result(engine, monkeypatch):
    model = _model()
    monkeypatch.setenv(ENGINE_ENV, engine)
    q = quantize_dynamic(model, reduce_range=False)
    assert {m.engine for m in q.modules() if isinstance(m, Int8Linear)} == {engine}
    ref = quantize_dynamic(model, reduce_range=False, engine="x86")
    x = torch.randn(16, 64)
    with torch.inference_mode():
        assert torch.allclose(q(x), ref(x), atol=2e-2)  # same int8 weights; activation rounding may differ by a step


def test_unknown_engine_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "qnnpack-please")
    with pytest.raises(EncoderforgeError, match="ENCODERFORGE_INT8_ENGINE='qnnpack-please'.*auto, x86, onednn"):
        int8_engine_choice(_model(), reduce_range=False)


def test_a_forced_engine_failing_its_check_falls_back(monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "onednn")
    real = Int8Linear.forward

    def broken(self, x):
        out = real(self, x)
        return out * 1.2 if self.engine == "onednn" else out  # a saturating kernel: 20% off

    monkeypatch.setattr(Int8Linear, "forward", broken)
    c = int8_engine.int8_engine_choice(_model(), reduce_range=False)
    assert (c.picked, c.source) == ("x86", "fallback") and "failed its numerical check" in c.note
