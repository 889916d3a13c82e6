"""Weight-only group-wise int4 (Q-BERT's group-wise idea): round trip within half a step, ~1/8 the fp32 bytes,
atomic safetensors save/load back to an fp32 Encoder, and the cosine gate on the real MiniLM."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.int4 import (
    INT4_MIN_MEAN_COSINE,
    dequantize_int4,
    dequantize_weight,
    export_int4,
    load_int4,
    quantize_int4,
    quantize_weight,
    save_int4,
)
from encoderforge.model.checkpoint import load
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.tokenization import load_tokenizer

torch.set_num_threads(1)


def _within_half_step(w: torch.Tensor, group_size: int, bits: int = 4) -> None:
    q = quantize_weight(w, group_size, bits=bits)
    back = dequantize_weight(q, group_size)
    assert back.shape == w.shape and back.dtype == torch.float32
    step = q.scale.float().repeat_interleave(group_size, dim=1)[:, : w.shape[1]]  # (out, in): each weight's step
    assert ((back - w).abs() <= 0.5 * step * (1 + 1e-6) + 1e-12).all()
    assert (back - w).abs().max() > 0  # quantized, not a copy


@pytest.mark.parametrize("bits", [4, 8])
def test_round_trip_within_half_a_step(bits):
    torch.manual_seed(0)
    w = torch.randn(48, 256) * torch.logspace(-3, 0, 48)[:, None]  # rows of very different ranges
    w[3] = 0.0  # an all-zero row (e.g. the padding embedding) comes back exactly
    w[5, :64] = 0.7  # a constant group with no zero in it
    _within_half_step(w, 64, bits)
    assert (dequantize_weight(quantize_weight(w, 64, bits=bits), 64)[3] == 0).all()


def test_group_size_not_dividing_the_input_dim_pads_the_last_group():
    torch.manual_seed(0)
    _within_half_step(torch.randn(10, 100), 64)  # groups 0..63 and 64..99 (zero-padded, zeros never widen the range)
    for bad in (0, -2, 7):
        with pytest.raises(EncoderforgeError, match=f"group_size={bad}"):
            quantize_weight(torch.randn(4, 8), bad)


def test_packed_linear_weights_are_about_an_eighth_of_fp32():
    enc = Encoder(preset("bert-tiny", vocab_size=500)).eval()
    state = quantize_int4(enc, group_size=128)
    linears = {f"{n}.weight": m.weight for n, m in enc.named_modules() if isinstance(m, nn.Linear)}
    assert set(linears) < set(state.weights) and "embeddings.tok.weight" in state.weights
    for name, w in linears.items():
        q = state.weights[name]
        assert q.codes.dtype == torch.uint8 and q.codes.shape == (w.shape[0], w.shape[1] // 2)  # two codes per byte
        packed = q.codes.numel() + 2 * q.scale.numel() + q.zero.numel()  # uint8 codes, fp16 scales, uint8 zero points
        assert 1 / 8 < packed / (4 * w.numel()) < 0.135  # 0.5 + 3/128 bytes per weight vs 4
    # Everything else (LayerNorms, biases, position embeddings) is kept in fp32, exactly.
    dq = dequantize_int4(state).state_dict()
    for k, v in enc.state_dict().items():
        if k not in state.weights:
            assert torch.equal(dq[k], v), k


def test_save_load_is_atomic_and_rebuilds_an_fp32_encoder(tmp_path, minilm_path):
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=500, attention="sdpa")).eval()
    state = quantize_int4(enc, group_size=32, keep_8bit=("fc1",))
    assert state.weights["layers.0.mlp.fc1.weight"].bits == 8 and state.weights["layers.0.mlp.fc2.weight"].bits == 4
    path = save_int4(state, tmp_path / "m.int4.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int4.safetensors"]
    loaded, direct = load_int4(path), dequantize_int4(state)
    assert loaded.cfg == enc.cfg and all(p.dtype == torch.float32 for p in loaded.parameters())
    ids = torch.randint(5, 500, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), direct(ids), atol=0, rtol=0)
    with pytest.raises(EncoderforgeError, match="missing.int4.safetensors: no such file"):
        load_int4(tmp_path / "missing.int4.safetensors")
    with pytest.raises(EncoderforgeError, match="not an encoderforge int4 file"):
        load_int4(minilm_path / "model.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(EncoderforgeError, match="corrupt or truncated"):
        load_int4(tmp_path / "cut.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bare.safetensors"), metadata={"format": "encoderforge-int4"})
    with pytest.raises(EncoderforgeError, match="bare.safetensors.*re-export"):
        load_int4(tmp_path / "bare.safetensors")
    with pytest.raises(EncoderforgeError, match="keep_8bit"):
        quantize_int4(enc, keep_8bit=("fc9",))
    with pytest.raises(EncoderforgeError, match=r"\.safetensors"):
        save_int4(state, tmp_path / "m.bin")


def test_minilm_int4_gate_size_and_atomic_rejection(minilm_path, real_texts, tmp_path):
    enc, tok = load(minilm_path).encoder, load_tokenizer(minilm_path)
    rep = export_int4(enc, tmp_path / "minilm.int4.safetensors", tokenizer=tok, texts=real_texts)
    assert rep.mean_cosine >= INT4_MIN_MEAN_COSINE and rep.n_texts == len(real_texts), rep
    assert rep.size_mb == pytest.approx(rep.path.stat().st_size / 2**20)
    assert rep.size_mb < 0.16 * rep.fp32_mb  # 86.6 MiB of fp32 parameters -> ~12 MiB
    with torch.no_grad():  # what is on disk is what was measured
        ids = torch.randint(1000, 30000, (2, 7))
        torch.testing.assert_close(load_int4(rep.path)(ids), dequantize_int4(quantize_int4(enc))(ids), atol=0, rtol=0)
    with pytest.raises(EncoderforgeError, match=r"mean cosine 0\.\d+ to fp32 .* below min_mean_cosine") as e:
        export_int4(enc, tmp_path / "bad.int4.safetensors", tokenizer=tok, texts=real_texts, min_mean_cosine=0.9999)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm.int4.safetensors"]
    with pytest.raises(EncoderforgeError, match="texts"):
        export_int4(enc, tmp_path / "x.int4.safetensors", tokenizer=tok, texts=[])
