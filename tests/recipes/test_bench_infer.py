"""The benchmark's plumbing (not its speed: speed is measured by `encoderforge bench infer`, never asserted)."""

from __future__ import annotations

import json

import pytest

from encoderforge.hardware.cpu import cpu_info
from encoderforge.model import preset
from encoderforge.recipes.bench_infer import bench_infer, model_flops


def test_model_flops_counts_linear_and_attention():
    cfg = preset("minilm-l6")
    one = model_flops([10], cfg)
    per_token = 2 * (4 * 384 * 384 + 2 * 384 * 1536) * 6
    assert one == per_token * 10 + 4 * 100 * 384 * 6
    assert model_flops([10, 10], cfg) == 2 * one


@pytest.mark.slow
def test_bench_infer_writes_every_runner(minilm_path, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    res = bench_infer(minilm_path, sets=["short"], n=48, threads=1, repeats=1, out=tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    s = data["sets"][0]
    runners = set(s["tokens_per_s"])
    bf16 = {"encoderforge bf16"} if cpu_info().bf16 else set()
    assert runners == {
        "encoderforge fp32",
        "encoderforge int8",
        "encoderforge auto",
        *bf16,
        "transformers sdpa (arrival)",
        "transformers sdpa (sorted)",
        "onnxruntime fp32 (sorted)",
        "onnxruntime int8 (sorted)",
    }
    assert all(v > 0 for v in s["tokens_per_s"].values())
    assert res[0].max_abs_diff <= 1e-4  # the engine measured is the engine that matches transformers
    # every runner is reported against the ceiling of its own precision, measured on this CPU
    assert s["precision"]["encoderforge int8"] == s["precision"]["onnxruntime int8 (sorted)"] == "int8"
    assert s["precision"]["encoderforge auto"] in ("fp32", "bf16") and set(s["kernel"]) == runners
    assert data["gemm_ceiling_gflops"]["fp32"] > 1 and data["gemm_ceiling_gflops"]["int8"] > 1
    assert ("bf16" in data["gemm_ceiling_gflops"]) == bool(bf16) and data["cpu"] == cpu_info().describe()
    if not bf16:
        assert any("encoderforge bf16 skipped" in n for n in s["notes"])
    assert all(v["mean"] >= 0.99 for v in s["cosine_to_fp32"].values())
    assert (tmp_path / "results.png").stat().st_size > 5000
    md = (tmp_path / "results.md").read_text()
    assert "| short | encoderforge fp32 | fp32 / " in md and "% of this CPU's peak for that precision" in md
    assert md.startswith(f"CPU: {cpu_info().describe()}")
