"""The one training loop, set up as `transformers.Trainer`'s defaults, takes the same optimizer steps as
`BertForSequenceClassification` trained by hand the way `Trainer` trains it (torch AdamW, linear decay with no warm-up,
gradient clipping at 1.0, mean cross-entropy), on the real MiniLM with dropout off (the two draw their
masks differently). This pins down that a gap to `Trainer` on a task comes from settings, never from the loop,
the packed (padding-free) encoder, the pooler head or the fused optimizer."""

from __future__ import annotations

import json

import pytest
import torch

from encoderforge.model import checkpoint
from encoderforge.model.attention import Attention
from encoderforge.model.dropout import Dropout
from encoderforge.tasks.classification import ClassificationTask
from encoderforge.tasks.pooled import SequenceModel
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.args import TrainArgs
from encoderforge.training.distributed import setup
from encoderforge.training.loop import train
from encoderforge.training.schedules import lr_at

STEPS = 6


def _dropout_off(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, Dropout):
            m.p = 0.0
        if isinstance(m, Attention):
            m.dropout_p = 0.0


def test_loop_steps_equal_bert_for_sequence_classification_trained_as_trainer_does(minilm_path, bbc_rows, tmp_path):
    import transformers

    labels = sorted({t for t, _ in bbc_rows})
    rows = [((text,), topic) for topic, text in bbc_rows[:48]]
    task = ClassificationTask(load_tokenizer(minilm_path), labels, rows, rows[:8], max_length=48, batch_rows=8, seed=3)
    torch.manual_seed(0)
    ours = SequenceModel(checkpoint.load(minilm_path).encoder, len(labels), pooling="pooler")
    _dropout_off(ours)
    hf = transformers.BertForSequenceClassification.from_pretrained(
        str(minilm_path), num_labels=len(labels), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    with torch.no_grad():  # the same random head in both
        hf.classifier.weight.copy_(ours.head.out.weight)
        hf.classifier.bias.copy_(ours.head.out.bias)
    args = TrainArgs(
        steps=STEPS,
        batch_rows=8,
        lr=5e-5,
        warmup_steps=0,
        weight_decay=0.0,
        beta2=0.999,
        eps=1e-8,
        log_every=1,
        eval_every=0,
        save_every=0,
        out_dir=str(tmp_path),
        progress=False,
        device="cpu",
    )
    train(ours, task, args, setup("cpu"))

    # Trainer's step, by hand: torch AdamW (its defaults: wd 0, betas 0.9/0.999, eps 1e-8), clip 1.0, linear decay.
    # One difference is kept on purpose: our linear decay reaches 0 at the last step, Trainer's one step after it
    # (lr * (T - s) / T), so the LRs are taken from our schedule here
    optimizer = torch.optim.AdamW(hf.parameters(), lr=5e-5, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, peak=1.0, total=STEPS))
    batches = task.train_batches(0)  # resume-exact: the stream the loop trained on
    hf.train()
    ref_losses = []
    for _ in range(STEPS):
        (b,) = next(batches)
        ids = torch.nn.utils.rnn.pad_sequence(list(torch.split(b.input_ids, b.lengths.tolist())), batch_first=True)
        mask = (torch.arange(ids.shape[1])[None] < b.lengths[:, None]).long()
        loss = hf(input_ids=ids, attention_mask=mask, labels=b.targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        ref_losses.append(loss.item())

    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == STEPS
    assert losses == [pytest.approx(x, rel=1e-4, abs=1e-5) for x in ref_losses]
    assert ref_losses[-1] < ref_losses[0]  # it learned: the comparison is not between two idle models
    sd = hf.state_dict()
    pairs = {  # ours -> transformers' name, from the embeddings to the head
        "encoder.embeddings.tok.weight": "bert.embeddings.word_embeddings.weight",
        "encoder.layers.0.mlp.fc1.weight": "bert.encoder.layer.0.intermediate.dense.weight",
        "encoder.layers.5.mlp.fc2.weight": "bert.encoder.layer.5.output.dense.weight",
        "head.dense.weight": "bert.pooler.dense.weight",
        "head.out.weight": "classifier.weight",
    }
    mine = ours.state_dict()
    start = transformers.BertForSequenceClassification.from_pretrained(str(minilm_path), num_labels=len(labels)).state_dict()
    for a, b in pairs.items():
        assert not torch.equal(sd[b], start[b]) or b == "classifier.weight", b  # every checked tensor moved
        torch.testing.assert_close(mine[a], sd[b], atol=2e-6, rtol=1e-4, msg=lambda m, a=a: f"{a}: {m}")
