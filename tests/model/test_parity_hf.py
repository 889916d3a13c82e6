"""Parity with transformers.BertModel on the real all-MiniLM-L6-v2 weights (litgpt test_against_hf style)."""

from __future__ import annotations

import pytest
import torch

from encoderforge.model.checkpoint import load
from encoderforge.tokenization import load_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_batch(minilm_path, real_texts):
    tok = transformers.BertTokenizerFast.from_pretrained(str(minilm_path))
    batch = tok(real_texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    model = transformers.BertModel.from_pretrained(str(minilm_path), attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
    return batch, ref


@pytest.mark.parametrize("backend", ["eager", "sdpa", "varlen"])
def test_every_backend_matches_transformers(minilm_path, hf_batch, backend):
    batch, ref = hf_batch
    enc = load(minilm_path, attention=backend).encoder
    with torch.no_grad():
        out = enc(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    assert real.sum() > 500 and (~real).sum() > 100  # the batch really is variable-length
    assert (out - ref)[real].abs().max().item() <= 1e-4


def test_unpadded_equals_padded_on_real_tokens(minilm_path, hf_batch):
    batch, _ = hf_batch
    enc = load(minilm_path, attention="sdpa").encoder
    with torch.no_grad():
        padded = enc(batch["input_ids"], batch["attention_mask"])
        unpadded = enc.set_attention("varlen")(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(unpadded[real], padded[real], atol=1e-5, rtol=0)
    assert unpadded[~real].abs().max() == 0  # padded positions are exactly zero after pad()


def test_our_tokenizer_gives_the_ids_of_bert_tokenizer_fast(minilm_path, real_texts):
    ref = transformers.BertTokenizerFast.from_pretrained(str(minilm_path))
    for source in (minilm_path / "vocab.txt", minilm_path / "tokenizer.json"):
        ours = load_tokenizer(source)
        got = [e.ids for e in ours.encode_batch(real_texts)]
        want = ref(real_texts)["input_ids"]
        assert got == want, source.name
