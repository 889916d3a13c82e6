"""The int8 model on disk (issue 16): the linears' exact int8 codes and an int8 word-embedding table, so an int8
MiniLM is ~4x smaller than fp32 and loads back to the same int8 model."""

from __future__ import annotations

import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.compression.int8_linear import Int8Linear
from encoderforge.compression.int8_store import EMBEDDING, load_int8, save_int8
from encoderforge.compression.quantize import cpu_has_vnni, quantize_dynamic
from encoderforge.model import checkpoint


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return checkpoint.load(minilm_path).encoder.eval()


@pytest.mark.parametrize("reduce_range", [False, True])
def test_loaded_linears_hold_the_same_int8_codes(minilm, tmp_path, reduce_range):
    from encoderforge.hardware.cpu import cpu_info

    if not reduce_range and not cpu_info().vnni:
        pytest.skip("8-bit weights load as 7-bit codes on a CPU without VNNI (tests/compression/test_int8_static.py)")
    path = save_int8(minilm, tmp_path / "m.int8.safetensors", reduce_range=reduce_range)
    loaded = load_int8(path, engine="x86")
    direct = quantize_dynamic(minilm, reduce_range=reduce_range, engine="x86")
    pairs = [(a, b) for a, b in zip(loaded.modules(), direct.modules()) if isinstance(a, Int8Linear)]
    assert len(pairs) >= 6 * 4
    with torch.inference_mode():
        for a, b in pairs:
            assert a.reduce_range == reduce_range
            qa, qb = (torch.ops.quantized.linear_unpack(m._packed)[0] for m in (a, b))
            assert torch.equal(qa.int_repr(), qb.int_repr())  # the very same int8 codes
            torch.testing.assert_close(qa.q_per_channel_scales(), qb.q_per_channel_scales(), rtol=1e-6, atol=0)
            x = torch.randn(50, a.in_features)
            torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)  # scales stored as fp32: ulp-level only
    emb, ref = loaded.state_dict()[EMBEDDING], minilm.state_dict()[EMBEDDING]
    rel = (emb - ref).norm(dim=1) / ref.norm(dim=1).clamp(min=1e-12)
    assert rel.mean() < 0.01 and rel.max() < 0.05  # per-row int8; a row with one outlier value is coarser


def test_int8_embeddings_cost_nothing_end_to_end(minilm, minilm_path, tmp_path, real_texts):
    """Against fp32: the stored model keeps what int8 linears keep (the int8 table alone keeps cosine 0.99999 on the
    bundled samples; compared with each other the two int8 models differ more, as the activations' rounding flips)."""
    from encoderforge.inference.engine import Engine
    from encoderforge.tokenization import load_tokenizer

    tok = load_tokenizer(minilm_path)

    def embed(model):
        return Engine(model, tok, pack=False, max_length=128).embed(real_texts)

    ref = embed(minilm)
    rr = not cpu_has_vnni()  # the product's default (a file with 8-bit weights is requantized to 7 bits without VNNI)
    stored = embed(load_int8(save_int8(minilm, tmp_path / "m.int8.safetensors", reduce_range=rr), engine="x86"))
    plain = embed(quantize_dynamic(minilm, reduce_range=rr, engine="x86"))
    cos_stored, cos_plain = (stored * ref).sum(axis=1), (plain * ref).sum(axis=1)
    assert cos_stored.mean() >= cos_plain.mean() - 0.002, (cos_stored.mean(), cos_plain.mean())
    assert cos_stored.mean() > 0.985


def test_size_on_disk_is_under_a_third_of_fp32(minilm, tmp_path, minilm_path):
    path = save_int8(minilm, tmp_path / "m.int8.safetensors", reduce_range=False)
    fp32 = (minilm_path / "model.safetensors").stat().st_size
    assert path.stat().st_size < fp32 / 3.5, (path.stat().st_size, fp32)


def test_bad_files_are_one_line_errors(minilm, tmp_path):
    with pytest.raises(EncoderforgeError, match="no such file"):
        load_int8(tmp_path / "missing.safetensors")
    path = save_int8(minilm, tmp_path / "m.int8.safetensors", reduce_range=False)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(EncoderforgeError, match="cut.safetensors: corrupt or truncated"):
        load_int8(cut)
    with pytest.raises(EncoderforgeError, match="must end in .safetensors"):
        save_int8(minilm, tmp_path / "m.pt", reduce_range=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.safetensors", "m.int8.safetensors"]


def test_static_int8_in_our_engine_is_refused_without_vnni(monkeypatch):
    """Without AVX512-VNNI oneDNN's u8 x s8 linear drifts from the direct computation (measured on an AVX2 EPYC), so
    static int8 is not offered there: the probe says no and quantizing names the alternatives in one line."""
    import dataclasses

    import encoderforge.compression.int8_static as st
    from encoderforge.hardware.cpu import cpu_info

    avx2 = dataclasses.replace(cpu_info(), flags=("avx2",))
    monkeypatch.setattr(st, "cpu_info", lambda: avx2)
    st.static_engine_available.cache_clear()  # cached per process: an earlier test on a VNNI CPU answered yes
    try:
        assert not st.static_engine_available()
        with pytest.raises(EncoderforgeError, match=r"needs AVX512-VNNI .*this CPU: no VNNI.*runtime: onnx.*method int8") as e:
            st.quantize_static_engine(torch.nn.Sequential(torch.nn.Linear(4, 2)), {"0": (-1.0, 1.0)})
        assert "\n" not in str(e.value)
    finally:
        st.static_engine_available.cache_clear()  # later tests probe the real CPU again
