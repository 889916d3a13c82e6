"""Packed oneDNN linears compute the same function as nn.Linear, for every MLP/bias variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from encoderforge.inference.cpu_pack import (
    PackedLinear,
    PackedMLP,
    pack_for_cpu,
    packing_available,
)
from encoderforge.model import Encoder, preset
from encoderforge.model.padding import layout_from_lengths

pytestmark = pytest.mark.skipif(not packing_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("act,bias", [("gelu", True), ("geglu", True), ("gelu", False)])
def test_packed_encoder_matches_plain(act, bias):
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=200, activation=act, bias=bias)).eval()
    fast = pack_for_cpu(enc)
    assert isinstance(fast.layers[0].mlp, PackedMLP) and isinstance(fast.layers[0].attn.qkv, PackedLinear)
    assert type(enc.layers[0].attn.qkv) is nn.Linear  # the input model is untouched
    lengths = torch.tensor([5, 17, 1, 9])
    ids = torch.randint(1, 200, (int(lengths.sum()),))
    lay = layout_from_lengths(lengths)
    with torch.inference_mode():
        torch.testing.assert_close(fast.forward_unpadded(ids, lay), enc.forward_unpadded(ids, lay), atol=2e-5, rtol=0)
        mask = torch.ones(2, 6, dtype=torch.long)
        torch.testing.assert_close(fast(ids[:12].view(2, 6), mask), enc(ids[:12].view(2, 6), mask), atol=2e-5, rtol=0)


def test_packed_linear_fuses_exact_gelu():
    torch.manual_seed(0)
    lin = nn.Linear(32, 64)
    x = torch.randn(7, 32)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(lin, activation="gelu")(x), torch.nn.functional.gelu(lin(x)), atol=1e-5, rtol=0)
