"""`encoderforge bench train` runs and pushes the same real tokens through both implementations."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from encoderforge import EncoderforgeError
from encoderforge.recipes.bench_train import bench_train


@pytest.mark.slow
def test_bench_train_times_both_on_the_same_tokens(legal_shards, small_tokenizer):
    pytest.importorskip("transformers")
    out = bench_train(
        str(legal_shards), str(small_tokenizer), preset_name="bert-tiny", max_len=64, rows=4, steps=3, warmup=1, threads=1
    )
    assert len(out["ours"]["step_seconds"]) == 3 and len(out["hf"]["step_seconds"]) == 3
    assert out["ours"]["tokens_per_s"] > 0 and out["hf"]["tokens_per_s"] > 0
    assert out["speedup"] == pytest.approx(out["hf"]["median_step_s"] / out["ours"]["median_step_s"])
    assert 0 <= out["padding_share_hf"] < 1


def test_bench_train_rejects_zero_steps(legal_shards, small_tokenizer):
    with pytest.raises(EncoderforgeError, match="steps=0"):
        bench_train(str(legal_shards), str(small_tokenizer), steps=0)


@pytest.mark.slow
def test_cli_bench_train_writes_results(legal_shards, small_tokenizer, tmp_path):
    pytest.importorskip("transformers")
    from encoderforge.cli.app import app

    res = CliRunner().invoke(
        app,
        [
            "bench",
            "train",
            "--shards",
            str(legal_shards),
            "--tokenizer",
            str(small_tokenizer),
            "--preset",
            "bert-tiny",
            "--max-len",
            "64",
            "--rows",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["config"]["preset"] == "bert-tiny" and "x (transformers batches" in res.output
    from encoderforge.training.fast_linear import train_linear_kernel

    kernel = train_linear_kernel()  # the run reports the GEMM path the training loop takes on this CPU
    assert saved["config"]["linear_kernel"] == kernel and f"our GEMMs: {kernel} on" in res.output
