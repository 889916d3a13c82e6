"""bf16 autocast training on CPU: the same loss curve as fp32 with fp32 master weights where the CPU has native
bf16, and a one-line error (before any work) where it has not."""

from __future__ import annotations

import pytest
import torch
from run_helpers import read_losses
from safetensors.torch import load_file

from encoderforge import EncoderforgeError
from encoderforge.hardware.cpu import CpuInfo, cpu_info
from encoderforge.recipes.pretrain import load_config, pretrain
from encoderforge.training import precision
from encoderforge.training.args import TrainArgs

NO_DROPOUT = "{dropout: 0.0, attention_dropout: 0.0}"  # dropout masks need not match across dtypes; compare the math


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_info", lambda: CpuInfo(model="test", flags=("avx2",)))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(not cpu_info().bf16, reason=f"this CPU ({cpu_info().model}) has no AVX512-BF16 or AMX: bf16 is refused")
def test_bf16_loss_curve_matches_fp32_and_weights_stay_fp32(tiny_overrides, tmp_path):
    over = {"train.steps": 30, "train.eval_every": 0, "train.save_every": 0, "model.overrides": NO_DROPOUT}
    ref_final = pretrain(load_config(None, tiny_overrides(tmp_path / "fp32", **over, **{"train.precision": "fp32"})))
    final = pretrain(load_config(None, tiny_overrides(tmp_path / "bf16", **over, **{"train.precision": "bf16"})))
    ref, got = read_losses(tmp_path / "fp32"), read_losses(tmp_path / "bf16")
    assert sorted(got) == sorted(ref) == list(range(1, 31))
    assert any(got[s] != ref[s] for s in ref)  # autocast really ran: bf16 rounding shows in the losses
    # bf16 rounds the GEMM inputs to 8 mantissa bits (~0.4% per logit here), but GEMMs accumulate in fp32 and the
    # loss averages ~150 masked tokens' errors, which mostly cancel: measured, the worst step differs by 1e-4 of
    # the loss and the final eval by 5e-5. Tolerance 1% per step, 0.5% at the end and on the eval: 50-100x the
    # measured gap (other CPUs' bf16 kernels round differently), still well inside the ~0.1 step-to-step noise.
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=0.01), (s, ref[s], got[s])
    assert got[30] == pytest.approx(ref[30], rel=0.005)
    assert final["eval_mlm_loss"] == pytest.approx(ref_final["eval_mlm_loss"], rel=0.005)  # evaluation autocasts too
    assert got[30] < got[1] - 0.5  # and it learns
    ckpt = sorted((tmp_path / "bf16" / "checkpoints").iterdir())[-1]
    weights, moments = load_file(ckpt / "model.safetensors"), load_file(ckpt / "optimizer.safetensors")
    assert weights and moments
    # master weights and AdamW moments stay fp32: autocast only changes the dtype of the forward's GEMM inputs
    assert {t.dtype for t in [*weights.values(), *moments.values()] if t.is_floating_point()} == {torch.float32}


def test_bf16_refused_on_a_cpu_without_native_bf16(no_bf16_cpu, tiny_overrides, tmp_path):
    with pytest.raises(EncoderforgeError, match=r"train\.precision=bf16: this CPU \(test\) has no AVX512-BF16 or AMX"):
        TrainArgs(precision="bf16", device="cpu")
    with pytest.raises(EncoderforgeError, match="use fp32 or auto"):
        precision.autocast_dtype("bf16", torch.device("cpu"))
    with pytest.raises(EncoderforgeError, match=r"train\.precision=bf16"):  # a config fails while loading: no work done
        load_config(None, tiny_overrides(tmp_path / "run", **{"train.precision": "bf16"}))
    assert not (tmp_path / "run").exists()


def test_auto_and_fp32_stay_fp32_on_cpu(no_bf16_cpu):
    cpu = torch.device("cpu")
    assert precision.autocast_dtype("auto", cpu) is None and precision.autocast_dtype("fp32", cpu) is None
    TrainArgs(precision="auto", device="cpu")  # no error: auto never asks for bf16 on a CPU
    TrainArgs(precision="fp32", device="cpu")


def test_auto_stays_fp32_even_on_a_bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_info", lambda: CpuInfo(model="test", flags=("avx512f", "avx512_bf16")))
    assert precision.autocast_dtype("auto", torch.device("cpu")) is None
    assert precision.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
