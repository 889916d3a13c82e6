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


def _hf_copy(minilm_path, d, **config):
    """MiniLM's directory with an edited config.json (weights linked, not copied)."""
    d.mkdir()
    for p in minilm_path.iterdir():
        if p.is_file() and p.name != "config.json":
            (d / p.name).symlink_to(p)
    cfg = json.loads((minilm_path / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **config}))
    return d


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_config_that_disagrees_with_the_weights_names_the_tensor(minilm_path, tmp_path):
    d = _hf_copy(minilm_path, tmp_path / "hf", hidden_size=768)
    with pytest.raises(EncoderforgeError) as e:
        load(d)
    msg = _one_line(e)
    assert (
        f"{d / 'model.safetensors'}: tensor 'embeddings.word_embeddings.weight' has shape (30522, 384) but "
        f"{d / 'config.json'} expects (30522, 768)"
    ) in msg, msg
    d = _hf_copy(minilm_path, tmp_path / "ffn", intermediate_size=1024)
    with pytest.raises(
        EncoderforgeError,
        match=r"'encoder.layer.0.intermediate.dense.weight' has shape \(1536, 384\) "
        r"but .*config.json expects \(1024, 384\)",
    ):
        load(d)
    # our own format: config.json's model.hidden_size edited by hand
    torch.manual_seed(0)
    save(Encoder(preset("bert-tiny", vocab_size=300)), tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    cfg["model"]["hidden_size"] = 64
    (tmp_path / "ours" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EncoderforgeError) as e:
        load(tmp_path / "ours")
    assert "model.safetensors: tensor 'encoder.embeddings.tok.weight' has shape (300, 128) but" in _one_line(e)
    assert "expects (300, 64)" in str(e.value)


def test_missing_and_extra_tensors_are_named(minilm_path, tmp_path):
    with pytest.raises(EncoderforgeError) as e:  # config says 4 layers, the file holds 6
        load(_hf_copy(minilm_path, tmp_path / "fewer", num_hidden_layers=4))
    msg = _one_line(e)
    assert "32 extra tensors" in msg and "'encoder.layer.4.attention.output.LayerNorm.bias'" in msg, msg
    with pytest.raises(EncoderforgeError) as e:  # config says 8 layers
        load(_hf_copy(minilm_path, tmp_path / "more", num_hidden_layers=8))
    msg = _one_line(e)
    assert "missing 32 tensors" in msg and "'encoder.layer.6.attention.self.query.weight'" in msg, msg
    torch.manual_seed(0)
    save(Encoder(preset("bert-tiny", vocab_size=300)), tmp_path / "ours", extra={"mlm.bias": torch.zeros(300)})
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "ours" / "model.safetensors"))
    state.pop("encoder.layers.1.mlp.fc2.bias")
    state["encoder.layers.2.mlp.fc2.bias"] = torch.zeros(128)
    save_file(state, str(tmp_path / "ours" / "model.safetensors"))
    with pytest.raises(EncoderforgeError) as e:
        load(tmp_path / "ours")
    msg = _one_line(e)
    assert "missing 1 tensors ['encoder.layers.1.mlp.fc2.bias']" in msg, msg
    assert "1 extra tensors ['encoder.layers.2.mlp.fc2.bias']" in msg, msg


def test_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path, small_tokenizer):
    torch.manual_seed(0)
    save(Encoder(preset("bert-tiny", vocab_size=300)), tmp_path / "small", tokenizer_dir=small_tokenizer.parent)
    with pytest.raises(EncoderforgeError) as e:
        load(tmp_path / "small")
    msg = _one_line(e)
    tok = tmp_path / "small" / "tokenizer.json"
    assert f"{tok}: the tokenizer has 2000 tokens but the model only 300 embedding rows" in msg, msg
    assert "encoderforge tokenizer extend" in msg and "the model's own tokenizer" in msg
    # a tokenizer smaller than the table is legal (BERT checkpoints pad their vocabulary)
    save(Encoder(preset("bert-tiny", vocab_size=2048)), tmp_path / "padded", tokenizer_dir=small_tokenizer.parent)
    assert load(tmp_path / "padded").encoder.cfg.vocab_size == 2048


def test_mlm_bias_must_match_the_vocabulary(tmp_path):
    torch.manual_seed(0)
    save(Encoder(preset("bert-tiny", vocab_size=300)), tmp_path / "ck", extra={"mlm.bias": torch.zeros(299)})
    with pytest.raises(EncoderforgeError, match=r"'mlm.bias' has shape \(299,\) but .*config.json expects \(300,\)"):
        load(tmp_path / "ck")


def _pruned_tiny():
    from encoderforge.model.surgery import prune_ffn_neurons, prune_heads

    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=300, num_layers=3, num_heads=4, dropout=0.0)).eval()
    prune_heads(enc, 0, [1, 3])
    prune_heads(enc, 2, [0])
    prune_ffn_neurons(enc, 1, range(0, 512, 3))
    return enc


def test_a_model_with_per_layer_widths_round_trips_exactly(tmp_path):
    enc = _pruned_tiny()
    save(enc, tmp_path / "ck")
    model = json.loads((tmp_path / "ck" / "config.json").read_text())["model"]
    assert model["layer_heads"] == [2, 4, 1] and model["layer_intermediate"] == [512, 171, 512]
    back = load(tmp_path / "ck").encoder
    assert back.cfg == enc.cfg
    ids = torch.randint(5, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        assert torch.equal(back(ids, mask), enc(ids, mask))


def test_config_json_that_disagrees_with_pruned_weights_is_named(tmp_path):
    save(_pruned_tiny(), tmp_path / "ck")
    raw = json.loads((tmp_path / "ck" / "config.json").read_text())
    raw["model"]["layer_heads"] = [4, 4, 1]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(
        EncoderforgeError, match=r"'encoder.layers.0.attn.qkv.weight' has shape \(192, 128\).*layer_heads=\[4, 4, 1\]"
    ):
        load(tmp_path / "ck")


def test_uniform_ffn_pruning_exports_to_hugging_face(tmp_path):
    from encoderforge.model.surgery import prune_ffn_neurons

    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=300, attention="sdpa")).eval()
    for layer in range(2):
        prune_ffn_neurons(enc, layer, range(layer, 512, 4))
    out = export_hf(enc, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 128
    model, info = transformers.AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = torch.randint(5, 300, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).last_hidden_state, enc(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "prune, match",
    [
        (
            lambda e: prune_heads_all(e, [0]),
            r"layer_heads=\[1, 1\] \(pruned heads\).*keep the encoderforge format or export ONNX",
        ),
        (lambda e: prune_ffn(e, 1, range(8)), r"layer_intermediate=\[512, 8\].*keep the encoderforge format or export ONNX"),
    ],
)
def test_shapes_bert_config_cannot_hold_refuse_hf_export(tmp_path, prune, match):
    enc = Encoder(preset("bert-tiny", vocab_size=50))
    prune(enc)
    with pytest.raises(EncoderforgeError, match=match):
        export_hf(enc, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def prune_heads_all(enc, keep):
    from encoderforge.model.surgery import prune_heads

    for layer in range(enc.cfg.num_layers):  # uniform, but fewer heads of the same head_dim
        prune_heads(enc, layer, keep)


def prune_ffn(enc, layer, keep):
    from encoderforge.model.surgery import prune_ffn_neurons

    prune_ffn_neurons(enc, layer, keep)
