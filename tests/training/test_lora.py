"""LoRA: adapters start as a no-op, only they train, merging gives the same function as a plain encoder, and a
LoRA fine-tuning run saves an ordinary checkpoint."""

from __future__ import annotations

import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.model import checkpoint
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.training.lora import LoRALinear, apply_lora, merge_lora


def tiny() -> Encoder:
    torch.manual_seed(0)
    return Encoder(EncoderConfig(vocab_size=60, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)).eval()


def test_adapters_start_as_noop_and_merge_exactly():
    enc = tiny()
    ids = torch.randint(5, 60, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    before = enc(ids, mask)
    n = apply_lora(enc, rank=4, alpha=8)
    assert n == 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 64) + (64 + 32))  # per block: A (r x I) + B (O x r), 4 layers
    assert {name for name, p in enc.named_parameters() if p.requires_grad} == {
        f"layers.{i}.{t}.lora_{ab}" for i in range(2) for t in ("attn.qkv", "attn.out", "mlp.fc1", "mlp.fc2") for ab in "ab"
    }
    torch.testing.assert_close(enc(ids, mask), before)  # B = 0: unchanged at the start
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.1)
    adapted = enc(ids, mask)
    assert not torch.allclose(adapted, before)
    assert merge_lora(enc) == 8
    assert not any(isinstance(m, LoRALinear) for m in enc.modules())
    torch.testing.assert_close(enc(ids, mask), adapted, atol=1e-5, rtol=1e-5)
    assert set(enc.state_dict()) == set(tiny().state_dict())  # a plain encoder again


@pytest.mark.parametrize("targets", [("attn.qkv", "mlp"), ("attn.qkv", "mlp.nope"), ("nope.fc1",)])
def test_a_bad_target_is_a_clear_error_and_changes_nothing(targets):
    enc = tiny()
    with pytest.raises(EncoderforgeError, match=f"LoRA target '{targets[-1]}' is not a linear layer"):
        apply_lora(enc, rank=4, targets=targets)
    assert not any(isinstance(m, LoRALinear) for m in enc.modules())  # checked before the first wrap
    assert all(p.requires_grad for p in enc.parameters())


def test_lora_finetune_saves_a_plain_checkpoint(tiny_model, bbc_rows, tmp_path):
    from encoderforge.data.readers import Schema, from_records
    from encoderforge.recipes.finetune import finetune
    from encoderforge.recipes.finetune_config import finetune_config

    recs = [(text, topic) for topic, text in bbc_rows]
    train, dev = from_records(recs[::2], Schema(), name="t"), from_records(recs[1::2], Schema(), name="d")
    cfg = finetune_config(
        "classify",
        values={
            "model": str(tiny_model),
            "train.out_dir": str(tmp_path / "run"),
            "finetune.max_length": 32,
            "finetune.epochs": 1,
            "train.batch_rows": 8,
            "train.lr": 5e-3,
            "finetune.lora_rank": 4,
        },
    )
    r = finetune(cfg, train=train, dev=dev)
    full = sum(p.numel() for p in checkpoint.load(tiny_model).encoder.parameters())
    assert r.metrics["trainable_params"] < 0.05 * full  # adapters + head only
    base, tuned = (
        checkpoint.load(tiny_model).encoder.state_dict(),
        checkpoint.load(tmp_path / "run" / "model").encoder.state_dict(),
    )
    assert set(base) == set(tuned)
    assert torch.equal(base["embeddings.tok.weight"], tuned["embeddings.tok.weight"])  # frozen, not adapted
    assert not torch.equal(base["layers.0.attn.qkv.weight"], tuned["layers.0.attn.qkv.weight"])  # merged update
    assert torch.linalg.matrix_rank(tuned["layers.0.attn.qkv.weight"] - base["layers.0.attn.qkv.weight"]) <= 4


@pytest.fixture
def tiny_model(tmp_path, minilm_path):
    from encoderforge.model.config import preset

    torch.manual_seed(0)
    path = tmp_path / "tiny"
    checkpoint.save(Encoder(preset("bert-tiny", vocab_size=30522, max_position=64)), path, tokenizer_dir=minilm_path)
    return path


@pytest.fixture
def bbc_rows():
    from encoderforge.data.datasets import bbc_documents

    docs = bbc_documents()
    return [(t, x[:300]) for t, x in docs[::37]][:60]
