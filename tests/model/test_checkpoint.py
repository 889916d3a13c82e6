"""Checkpoint round trips (ours and Hugging Face) and bad-input errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.model import Encoder, preset
from encoderforge.model.checkpoint import export_hf, load, save

transformers = pytest.importorskip("transformers")


def test_export_roundtrip_through_automodel(minilm_path, tmp_path, real_texts):
    enc = load(minilm_path, attention="sdpa").encoder
    out = export_hf(enc, tmp_path / "hf", tokenizer_dir=minilm_path)
    model, info = transformers.AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    batch = tok(real_texts[:8], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.eval()(**batch).last_hidden_state
        ours = enc(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert (ours - ref)[real].abs().max() <= 1e-4


def test_our_format_roundtrip_is_exact(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=300, norm="pre", activation="geglu", position="rope"))
    save(enc, tmp_path / "ck", extra={"mlm.bias": torch.arange(300.0)})
    back = load(tmp_path / "ck")
    assert back.source == "encoderforge" and back.encoder.cfg == enc.cfg
    for k, v in enc.state_dict().items():
        assert torch.equal(back.encoder.state_dict()[k], v), k
    assert torch.equal(back.extra["mlm.bias"], torch.arange(300.0))
    assert not list(tmp_path.glob(".ck.tmp-*"))


def test_pytorch_model_bin_loads_with_weights_only(minilm_path, tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(minilm_path / "config.json", d)
    from safetensors.torch import load_file

    torch.save(load_file(str(minilm_path / "model.safetensors")), d / "pytorch_model.bin")
    a, b = load(d).encoder, load(minilm_path).encoder
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_non_bert_layout_refuses_hf_export(tmp_path):
    enc = Encoder(preset("bert-tiny", vocab_size=50, norm="pre"))
    with pytest.raises(EncoderforgeError, match="cannot export to Hugging Face BERT: {'norm': 'pre'}"):
        export_hf(enc, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_missing_directory(tmp_path):
    with pytest.raises(EncoderforgeError, match=f"{tmp_path / 'nope'}: no such directory"):
        load(tmp_path / "nope")


def test_unsupported_architecture(minilm_path, tmp_path):
    d = tmp_path / "gpt"
    shutil.copytree(minilm_path, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(EncoderforgeError, match=r"config.json: model_type 'gpt2' is not supported"):
        load(d)


def test_corrupt_safetensors(minilm_path, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    shutil.copy(minilm_path / "config.json", d)
    (d / "model.safetensors").write_bytes((minilm_path / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(EncoderforgeError, match=r"model.safetensors: corrupt or truncated safetensors"):
        load(d)
