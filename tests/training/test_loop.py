"""The training loop: learning happens, accumulation is exact, and a SIGKILLed run resumes on the same curve."""

from __future__ import annotations

import json

import pytest
import torch
from run_helpers import read_losses, sigkill_after_checkpoint

from encoderforge.model.checkpoint import load
from encoderforge.recipes.pretrain import load_config, pretrain
from encoderforge.training.loop import build_optimizer


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocess uses 1 thread too: identical kernels, identical numbers
    yield
    torch.set_num_threads(n)


def test_loss_goes_down_and_run_dir_is_complete(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    final = pretrain(load_config(None, tiny_overrides(run, **{"train.steps": 30, "train.eval_every": 15})))
    losses = read_losses(run)
    assert len(losses) == 30
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(26, 31)) / 5
    assert last < first - 0.5, (first, last)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rss_mb"] > 50 for r in records if "loss" in r)  # resident memory logged with every loss
    evals = [r for r in records if "eval_mlm_loss" in r]
    assert [e["step"] for e in evals] == [0, 15, 30]
    assert evals[2]["eval_mlm_loss"] < evals[1]["eval_mlm_loss"] < evals[0]["eval_mlm_loss"]
    assert final["eval_mlm_loss"] == evals[2]["eval_mlm_loss"] and 0 < final["eval_mlm_accuracy"] < 1
    assert json.loads((run / "metrics.json").read_text())["step"] == 30
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000028", "step-00000030"]
    loaded = load(run / "model")  # the final model opens with the checkpoint loader, MLM head included
    assert {"mlm.bias", "mlm.dense.weight", "mlm.norm.weight"} <= set(loaded.extra)
    assert (run / "model" / "tokenizer.json").exists() and (run / "config.yaml").exists()


def test_gradient_accumulation_matches_full_batch(tiny_overrides, tmp_path):
    # dropout off: it draws different masks for differently shaped micro-batches
    over = {
        "train.steps": 4,
        "train.eval_every": 0,
        "train.save_every": 0,
        "model.overrides": "{dropout: 0.0, attention_dropout: 0.0}",
    }
    pretrain(load_config(None, tiny_overrides(tmp_path / "full", **over)))
    pretrain(load_config(None, tiny_overrides(tmp_path / "acc", **over, **{"train.micro_rows": 2})))
    full, acc = read_losses(tmp_path / "full"), read_losses(tmp_path / "acc")
    for s in full:
        assert full[s] == pytest.approx(acc[s], rel=1e-4, abs=1e-4)


def test_no_weight_decay_on_vectors():
    from encoderforge.model.config import preset
    from encoderforge.model.encoder import Encoder
    from encoderforge.tasks.mlm import MaskedLM
    from encoderforge.training.args import TrainArgs

    model = MaskedLM(Encoder(preset("bert-tiny", vocab_size=100)))
    opt = build_optimizer(model, TrainArgs(weight_decay=0.1))
    assert opt.defaults["fused"] is True  # torch's fused AdamW on CPU (transformers Trainer's default optimizer too)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "encoder.embeddings.norm.weight" in nd and "mlm.bias" in nd and "encoder.layers.0.attn.qkv.bias" in nd
    assert "encoder.embeddings.tok.weight" in {names[id(p)] for p in decay["params"]}
    assert not any(n.startswith("encoder.pooler") for n in nd)  # frozen, not optimised at all


def test_sigkilled_run_resumes_on_the_same_curve(tiny_overrides, tmp_path):
    over = {"train.steps": 24, "train.save_every": 3, "train.eval_every": 12}
    pretrain(load_config(None, tiny_overrides(tmp_path / "ref", **over)))
    ref = read_losses(tmp_path / "ref")

    run = tmp_path / "killed"
    resumed_from = sigkill_after_checkpoint(tiny_overrides(run, **over), run, 9)  # killed mid-run
    assert 9 <= resumed_from < 24

    pretrain(load_config(None, tiny_overrides(run, **over)))  # same command: resumes from the latest checkpoint
    got = read_losses(run)
    assert sorted(got) == sorted(ref)  # no step logged twice, none missing
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-6, abs=1e-6), s
