"""`encoderforge bench train` runs and pushes the same real tokens through both implementations, in fp32 and with
bf16 autocast, and reports FLOPs against a GEMM ceiling measured in the same run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from encoderforge import EncoderforgeError
from encoderforge.hardware.cpu import CpuInfo, cpu_info
from encoderforge.model.config import preset
from encoderforge.recipes.bench_ceiling_train import summary
from encoderforge.recipes.bench_train import _hf_flops, _ours_flops, bench_train
from encoderforge.tasks.mlm import MLMBatch
from encoderforge.training import precision


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
    assert out["config"]["precision"] == "fp32" and out["config"]["cpu"] == cpu_info().describe()
    assert set(out["ceiling"]) == {"fp32"} and out["ceiling"]["fp32"]["gflops"] > 0 and "hf_bf16" not in out
    for arm in ("ours", "hf"):
        a = out[arm]
        assert a["precision"] == "fp32" and a["gflops"] == pytest.approx(a["flops_per_step"] / a["median_step_s"] / 1e9)
        assert 0 < a["pct_of_peak"] < 100  # the median of each round's GFLOP/s over that round's ceiling
    assert out["hf"]["flops_per_step"] > out["ours"]["flops_per_step"]  # padding and a dense decoder
    assert "| ours | fp32 |" in summary(out) and "GEMM ceiling" in summary(out)


@pytest.mark.slow
@pytest.mark.skipif(not cpu_info().bf16, reason=f"this CPU ({cpu_info().model}) has no AVX512-BF16 or AMX: bf16 is refused")
def test_bench_train_bf16_adds_a_transformers_bf16_arm(legal_shards, small_tokenizer):
    pytest.importorskip("transformers")
    out = bench_train(
        str(legal_shards),
        str(small_tokenizer),
        preset_name="bert-tiny",
        max_len=64,
        rows=4,
        steps=2,
        warmup=1,
        threads=1,
        precision="bf16",
    )
    assert [out[a]["precision"] for a in ("ours", "hf", "hf_bf16")] == ["bf16", "fp32", "bf16"]
    assert set(out["ceiling"]) == {"fp32", "bf16"} and out["config"]["precision"] == "bf16"
    assert out["ceiling"]["bf16"]["gflops"] > 0 and all(0 < out[a]["pct_of_peak"] < 100 for a in ("ours", "hf", "hf_bf16"))
    assert out["speedup_vs_hf_bf16"] == pytest.approx(out["hf_bf16"]["median_step_s"] / out["ours"]["median_step_s"])
    assert "transformers bf16 autocast" in summary(out)


def test_bench_train_refuses_bf16_without_native_bf16(monkeypatch, legal_shards, small_tokenizer):
    monkeypatch.setattr(precision, "cpu_info", lambda: CpuInfo(model="test", flags=("avx2",)))
    with pytest.raises(EncoderforgeError, match=r"bench train --precision=bf16: this CPU \(test\).*use --precision fp32"):
        bench_train(str(legal_shards), str(small_tokenizer), precision="bf16")
    with pytest.raises(EncoderforgeError, match="precision='fp16'; use fp32 or bf16"):
        bench_train(str(legal_shards), str(small_tokenizer), precision="fp16")  # type: ignore[arg-type]


def test_step_flops_match_torchs_flop_counter():
    """Our FLOP model (3 x the forward's matrix products) against torch's count of the matmuls actually run."""
    transformers = pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    from encoderforge.model.encoder import Encoder
    from encoderforge.tasks.mlm import MaskedLM

    cfg = preset("bert-tiny", vocab_size=500)
    torch.manual_seed(0)
    # equal lengths: ours then runs no padding anywhere (unequal ones pad attention's grid, which is not counted)
    b = MLMBatch(
        torch.randint(5, 500, (120,)),
        torch.tensor([40, 40, 40], dtype=torch.int32),
        torch.tensor([3, 10, 45, 50, 60, 90, 100, 110]),
        torch.randint(5, 500, (8,)),
    )
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(
            MaskedLM(Encoder(cfg)).train()(b.input_ids, b.lengths, b.positions), b.labels
        ).backward()
    assert _ours_flops(cfg, b) == pytest.approx(fc.get_total_flops(), rel=1e-3)  # rows_attention's query grid: 3e-4
    hf_cfg = transformers.BertConfig(
        vocab_size=500,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        attn_implementation="sdpa",
    )
    x = torch.randint(5, 500, (3, 40))
    with FlopCounterMode(display=False) as fc:
        transformers.BertForMaskedLM(hf_cfg).train()(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss.backward()
    assert _hf_flops(cfg, x.shape) == fc.get_total_flops()


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
    assert (tmp_path / "b" / "results.md").read_text() == summary(saved)
    kernel = saved["config"]["linear_kernel"]  # the GEMM path the training loop takes for this model on this CPU
    assert kernel == ("onednn" if saved["config"]["linears_swapped"] else "torch") and f"our GEMMs: {kernel} on" in res.output
