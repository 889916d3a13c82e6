"""Fine-tuning parameter surgery and the loop's two hooks: per-group LR scales (layer-wise LR decay) and on_eval
(early stopping)."""

from __future__ import annotations

import json

import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.tasks import LossSum
from encoderforge.tasks.classification import SequenceModel
from encoderforge.training.args import TrainArgs
from encoderforge.training.distributed import setup
from encoderforge.training.loop import train
from encoderforge.training.params import freeze_lower, param_groups, reinit_top


def tiny(num_layers: int = 3) -> SequenceModel:
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=num_layers, num_heads=2, intermediate_size=64)
    return SequenceModel(Encoder(cfg), 3)


def test_layerwise_lr_scales_and_no_decay_on_vectors():
    model = tiny(3)
    groups = param_groups(model, weight_decay=0.1, lr_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert scale["head.out.weight"] == (1.0, 0.1) and scale["head.out.bias"] == (1.0, 0.0)
    assert scale["encoder.layers.2.mlp.fc1.weight"] == (0.5, 0.1)  # the top layer: one step below the head
    assert scale["encoder.layers.0.attn.qkv.weight"] == (0.125, 0.1)
    assert scale["encoder.embeddings.tok.weight"] == (0.0625, 0.1)
    assert scale["encoder.embeddings.norm.weight"] == (0.0625, 0.0)
    assert not any(n.startswith("encoder.pooler") for n in scale)  # the pooler is not trained
    with pytest.raises(EncoderforgeError, match="--lr-decay"):
        param_groups(model, weight_decay=0.1, lr_decay=1.5)


def test_freeze_and_reinit():
    model = tiny(3)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    assert freeze_lower(model.encoder, 2) > 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("encoder.embeddings.", "encoder.layers.0.", "encoder.layers.1.")) for n in trainable)
    assert "encoder.layers.2.attn.qkv.weight" in trainable
    reinit_top(model.encoder, 1, seed=1)
    after = model.encoder.state_dict()
    assert not torch.equal(before["layers.2.attn.qkv.weight"], after["layers.2.attn.qkv.weight"])
    assert torch.equal(before["layers.1.attn.qkv.weight"], after["layers.1.attn.qkv.weight"])
    assert float(after["layers.2.attn.qkv.bias"].abs().sum()) == 0.0  # BERT init: zero biases
    with pytest.raises(EncoderforgeError, match="--freeze-layers=5"):
        freeze_lower(model.encoder, 5)


class NoData:
    def to(self, device):
        return self


class Quadratic:
    """Minimise sum((w - 1)^2) per parameter: the gradient is known, so LR scales show up in the updates."""

    def train_batches(self, start_step):
        while True:
            yield [NoData()]

    def eval_batches(self):
        return [NoData()]

    def loss(self, model, batch):
        return LossSum(total=((model.a - 1) ** 2).sum() + ((model.b - 1) ** 2).sum(), count=1, tokens=1)

    def metrics(self, sums):
        return {"loss": sums["loss"] / sums["count"]}


def test_loop_applies_lr_scale_and_stops_when_on_eval_says_so(tmp_path):
    model = torch.nn.Module()
    model.a, model.b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    groups = [
        {"params": [model.a], "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": [model.b], "weight_decay": 0.0, "lr_scale": 0.1},
    ]
    seen = []
    args = TrainArgs(
        steps=10,
        batch_rows=1,
        lr=0.01,
        warmup_steps=0,
        schedule="constant",
        eval_every=2,
        save_every=0,
        out_dir=str(tmp_path),
        progress=False,
        device="cpu",
        grad_clip=0,
    )
    final = train(
        model, Quadratic(), args, setup("cpu"), param_groups=groups, on_eval=lambda step, m: seen.append(step) or step >= 4
    )
    # Adam's first steps move each parameter by ~lr: group b moves a tenth as far
    assert model.a.item() == pytest.approx(0.04, rel=0.05) and model.b.item() == pytest.approx(0.004, rel=0.05)
    assert seen == [2, 4] and final["step"] == 4
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4
