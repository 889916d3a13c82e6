"""Anchored MLM (tasks/anchor.py): the loss terms, the pull towards the start encoder, config errors, resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from run_helpers import read_losses

from encoderforge import EncoderforgeError
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.shards import load_documents
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.recipes.pretrain import load_config, pretrain
from encoderforge.tasks.anchor import AnchoredMLMTask
from encoderforge.tasks.mlm import MaskedLM, MLMTask
from encoderforge.tokenization import load_tokenizer


@pytest.fixture
def mlm_task(legal_shards, small_tokenizer) -> MLMTask:
    tok = load_tokenizer(small_tokenizer)
    docs = load_documents(legal_shards, "train", tokenizer=tok)
    return MLMTask(
        docs,
        load_documents(legal_shards, "eval", tokenizer=tok),
        MaskVocab.from_tokenizer(tok),
        MaskingConfig(ratio=0.2, strategy="whole_word"),
        max_len=64,
        batch_rows=4,
        eval_rows=4,
    )


def test_loss_is_cross_entropy_plus_weighted_cosine_distance(mlm_task, small_tokenizer):
    torch.manual_seed(0)
    model = MaskedLM(
        Encoder(
            preset("bert-tiny", vocab_size=load_tokenizer(small_tokenizer).get_vocab_size(), dropout=0.0, attention_dropout=0.0)
        )
    ).eval()
    batch = next(mlm_task.train_batches(0))[0]
    task = AnchoredMLMTask(mlm_task, copy.deepcopy(model.encoder), weight=3.0)
    same = task.loss(model, batch)  # the start itself: no distance, the loss is plain MLM
    assert same.stats["anchor_sum"] == pytest.approx(0.0, abs=1e-4)
    assert same.total.item() == pytest.approx(mlm_task.loss(model, batch).total.item(), rel=1e-5)
    assert same.stats["anchored"] == batch.input_ids.numel() - batch.positions.numel()

    with torch.no_grad():  # move the student: the anchor term is weight * r / (1 - r) * summed distance
        for p in model.encoder.layers[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = task.loss(model, batch)
    logits, hidden = model(batch.input_ids, batch.lengths, batch.positions, return_hidden=True)
    ce = F.cross_entropy(logits, batch.labels, reduction="sum").item()
    assert moved.stats["anchor_sum"] > 1e-3
    assert moved.total.item() == pytest.approx(ce + 3.0 * 0.2 / 0.8 * moved.stats["anchor_sum"], rel=1e-5)
    moved.total.backward()
    assert all(p.grad is None for p in task.start.parameters())  # the start is frozen
    m = task.metrics({"loss": moved.total.item(), "count": moved.count, **moved.stats})
    assert m["mlm_loss"] == pytest.approx(ce / moved.count, rel=1e-5)  # comparable with plain MLM runs
    assert m["anchor_cos_dist"] == pytest.approx(moved.stats["anchor_sum"] / moved.stats["anchored"])


def test_anchor_holds_the_features_of_a_continued_run(tiny_overrides, tmp_path):
    """Continue a tiny model with and without the anchor: the anchored run ends closer to its start."""
    base = tmp_path / "start"
    pretrain(load_config(None, tiny_overrides(base, **{"train.steps": 2})))
    cont = {"model.init_from": base / "model", "model.overrides": "{}", "train.steps": 8, "train.eval_every": 8, "train.lr": 5e-3}
    pretrain(load_config(None, tiny_overrides(tmp_path / "anchored", **cont, **{"model.anchor_weight": 20.0})))
    pretrain(load_config(None, tiny_overrides(tmp_path / "plain", **cont)))
    evals = [
        json.loads(x) for x in (tmp_path / "anchored" / "metrics.jsonl").read_text().splitlines() if "eval_anchor_cos_dist" in x
    ]
    assert [e["step"] for e in evals] == [0, 8] and evals[0]["eval_anchor_cos_dist"] == pytest.approx(0.0, abs=1e-4)
    assert "eval_mlm_loss" in evals[-1]

    # the plain run's distance, measured by the same metric on the same eval rows
    cfg = load_config(None, tiny_overrides(tmp_path / "x", **cont, **{"model.anchor_weight": 1.0}))
    tok = load_tokenizer(cfg.model.tokenizer)
    mlm = MLMTask(
        load_documents(cfg.data.shards, "train", tokenizer=tok),
        load_documents(cfg.data.shards, "eval", tokenizer=tok),
        MaskVocab.from_tokenizer(tok),
        cfg.masking,
        max_len=cfg.data.max_len,
        batch_rows=8,
        eval_rows=8,
    )
    task = AnchoredMLMTask(mlm, MaskedLM.from_checkpoint(base / "model").encoder, weight=1.0)

    def distance(run):
        model, sums = MaskedLM.from_checkpoint(run / "model").eval(), {"anchor_sum": 0.0, "anchored": 0.0}
        with torch.no_grad():
            for b in task.eval_batches():
                out = task.loss(model, b)
                sums = {k: sums[k] + out.stats[k] for k in sums}
        return sums["anchor_sum"] / sums["anchored"]

    plain, anchored = distance(tmp_path / "plain"), distance(tmp_path / "anchored")
    assert anchored == pytest.approx(evals[-1]["eval_anchor_cos_dist"], rel=1e-3)
    assert anchored < 0.5 * plain, (anchored, plain)


def test_anchored_run_resumes_on_the_same_curve(tiny_overrides, tmp_path):
    """The reference is rebuilt from model.init_from on resume (not from the resumed weights)."""
    base = tmp_path / "start"
    pretrain(load_config(None, tiny_overrides(base, **{"train.steps": 2})))
    cont = {
        "model.init_from": base / "model",
        "model.overrides": "{}",
        "model.anchor_weight": 5.0,
        "train.schedule": "constant",
        "train.warmup_steps": 0,
        "train.save_every": 3,
        "train.eval_every": 3,
    }
    pretrain(load_config(None, tiny_overrides(tmp_path / "straight", **cont, **{"train.steps": 6})))
    pretrain(load_config(None, tiny_overrides(tmp_path / "resumed", **cont, **{"train.steps": 3})))
    pretrain(load_config(None, tiny_overrides(tmp_path / "resumed", **cont, **{"train.steps": 6})))
    a, b = read_losses(tmp_path / "straight"), read_losses(tmp_path / "resumed")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-5), s


def test_anchor_config_errors(tiny_overrides, tmp_path):
    with pytest.raises(EncoderforgeError, match="set model.init_from"):
        load_config(None, tiny_overrides(tmp_path / "r", **{"model.anchor_weight": 1.0}))
    with pytest.raises(EncoderforgeError, match="anchor_weight must be >= 0"):
        load_config(None, tiny_overrides(tmp_path / "r", **{"model.anchor_weight": -1.0}))
    with pytest.raises(EncoderforgeError, match="objective electra"):
        load_config(
            None,
            tiny_overrides(tmp_path / "r", **{"model.anchor_weight": 1.0, "model.init_from": tmp_path, "objective": "electra"}),
        )
