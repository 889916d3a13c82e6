"""Fixtures of the inference tests: MiniLM's tokenizer and a random bert-tiny encoder over its vocabulary."""

from __future__ import annotations

import pytest
import torch

from encoderforge.model import Encoder, preset
from encoderforge.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def tok(minilm_path):
    return load_tokenizer(minilm_path)


@pytest.fixture(scope="module")
def tiny(tok) -> Encoder:
    torch.manual_seed(0)
    return Encoder(preset("bert-tiny", vocab_size=tok.get_vocab_size(), max_position=64)).eval()
