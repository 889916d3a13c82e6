"""The benchmark's plumbing (not its speed: speed is measured by `encoderforge bench infer`, never asserted)."""

from __future__ import annotations

import json

import pytest

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
    runners = set(data["sets"][0]["tokens_per_s"])
    assert runners == {
        "encoderforge fp32",
        "encoderforge int8",
        "transformers sdpa (arrival)",
        "transformers sdpa (sorted)",
        "onnxruntime fp32 (sorted)",
        "onnxruntime int8 (sorted)",
    }
    assert all(v > 0 for v in data["sets"][0]["tokens_per_s"].values())
    assert res[0].max_abs_diff <= 1e-4  # the engine measured is the engine that matches transformers
    assert data["gemm_ceiling_gflops"] > 1
    assert (tmp_path / "results.png").stat().st_size > 5000
    assert "| short | encoderforge fp32 |" in (tmp_path / "results.md").read_text()
