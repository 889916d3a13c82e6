"""The training benchmark script runs and pushes the same real tokens through both implementations."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_train_runs(legal_shards, small_tokenizer):
    pytest.importorskip("transformers")
    path = Path(__file__).parents[2] / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.bench_train(str(legal_shards), str(small_tokenizer), max_len=64, rows=4, steps=1, warmup=1, threads=1)
    assert out["ours"]["tokens_per_s"] > 0 and out["hf"]["tokens_per_s"] > 0
    assert 0 <= out["padding_share_hf"] < 1
