"""Tiny-config tests of every architecture switch and every attention backend."""

from __future__ import annotations

import itertools

import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.model import PRESETS, Encoder, EncoderConfig, preset
from encoderforge.model.heads import (
    MLMHead,
    SequenceClassifier,
    SpanHead,
    TokenClassifier,
    pool,
)
from encoderforge.model.padding import layout_from_lengths, pad, unpad, unpad_layout


def _batch(vocab=100, lengths=(7, 3, 11, 1)):
    T = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), T))
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


SWITCHES = list(itertools.product(["post", "pre"], ["gelu", "geglu"], ["learned", "rope"], [True, False]))


@pytest.mark.parametrize("norm,act,pos,bias", SWITCHES)
def test_every_switch_and_backend_matches_eager(norm, act, pos, bias):
    torch.manual_seed(0)
    cfg = preset("bert-tiny", vocab_size=100, norm=norm, activation=act, position=pos, bias=bias, attention="eager")
    enc = Encoder(cfg).eval()
    ids, mask = _batch()
    with torch.no_grad():
        ref = enc(ids, mask)
        for backend in ("sdpa", "varlen"):
            out = enc.set_attention(backend)(ids, mask)
            torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=1e-5, rtol=0)
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params > 0
    assert (enc.final_norm is not None) == (norm == "pre")
    assert (enc.embeddings.pos is None) == (pos == "rope")
    assert enc.layers[0].mlp.fc1.out_features == (1024 if act == "geglu" else 512)
    assert (enc.layers[0].attn.qkv.bias is None) == (not bias)


def test_switches_change_the_function():
    """Each switch must actually change the computation, not just the config."""
    ids, mask = _batch()
    outs = {}
    for field, value in [("norm", "pre"), ("activation", "geglu"), ("position", "rope")]:
        torch.manual_seed(0)
        base = Encoder(preset("bert-tiny", vocab_size=100)).eval()
        torch.manual_seed(0)
        other = Encoder(preset("bert-tiny", vocab_size=100, **{field: value})).eval()
        own = other.state_dict()
        other.load_state_dict({k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False)
        with torch.no_grad():
            outs[field] = (base(ids, mask) - other(ids, mask)).abs().max().item()
    assert all(v > 1e-3 for v in outs.values()), outs


def test_rope_scores_depend_on_relative_position():
    """The rotary identity: <R(m)q, R(n)k> == <R(m+s)q, R(n+s)k>, and it does change with n - m."""
    from encoderforge.model.attention import apply_rope, rope_tables

    q, k = torch.randn(1, 1, 16), torch.randn(1, 1, 16)

    def score(m, n):
        cq, sq = rope_tables(torch.tensor([m]), 16, 10000.0, torch.float32)
        ck, sk = rope_tables(torch.tensor([n]), 16, 10000.0, torch.float32)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert score(3, 7) == pytest.approx(score(13, 17), abs=1e-4)
    assert score(3, 7) != pytest.approx(score(3, 9), abs=1e-3)


def test_unpad_pad_roundtrip_and_lengths_layout():
    ids, mask = _batch()
    lay = unpad_layout(mask)
    assert lay.cu_seqlens.tolist() == [0, 7, 10, 21, 22] and lay.max_seqlen == 11
    flat = unpad(ids, lay)
    assert flat.shape == (22,)
    assert torch.equal(pad(flat, lay), ids)
    lay2 = layout_from_lengths(torch.tensor([7, 3, 11, 1]))
    assert torch.equal(lay2.cu_seqlens, lay.cu_seqlens)


def test_forward_unpadded_equals_padded_forward():
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=100)).eval()
    ids, mask = _batch()
    lay = unpad_layout(mask)
    with torch.no_grad():
        packed = enc.forward_unpadded(unpad(ids, lay), lay)
        ref = enc.set_attention("eager")(ids, mask)
    torch.testing.assert_close(packed, unpad(ref, lay), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm,pos", [("post", "learned"), ("pre", "rope")])
def test_last_layer_on_selected_rows_equals_the_full_forward(norm, pos):
    """forward_unpadded(rows=r) runs the last layer's queries, MLP and norms on r only: the same values and the same
    gradients as the full forward indexed at r (unsorted rows, several per sequence, a sequence with none, padding)."""
    torch.manual_seed(0)
    cfg = preset("bert-tiny", vocab_size=100, norm=norm, position=pos, dropout=0.0, attention_dropout=0.0)
    enc = Encoder(cfg)
    lengths = torch.tensor([7, 3, 11, 1, 5])
    lay = layout_from_lengths(lengths)
    ids = torch.randint(1, 100, (int(lengths.sum()),))
    rows = torch.tensor([12, 0, 20, 6, 9, 21, 10, 2])  # sequence 4 (rows 22-26) has none; sequence 3 is one token
    w = torch.randn(len(rows), cfg.hidden_size)
    grads = []
    for sparse in (False, True):
        enc.zero_grad()
        out = enc.forward_unpadded(ids, lay, rows=rows) if sparse else enc.forward_unpadded(ids, lay)[rows]
        (out * w).sum().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
        if not sparse:
            ref = out.detach()
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=0)
    assert out.shape == (len(rows), cfg.hidden_size) and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # the padded (eager) forward gives the same vectors at those tokens
        grid = enc.set_attention("eager")(pad(ids, lay), (pad(torch.ones_like(ids), lay) > 0).long())
    torch.testing.assert_close(out.detach(), unpad(grid, lay)[rows], atol=1e-5, rtol=0)


def test_selected_rows_edge_cases():
    """Duplicated rows, no rows, int32 rows, and a batch without padding (the packed tokens are the grid)."""
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=100)).eval()
    for lengths, rows in (([5, 3, 4], [4, 4, 0, 11]), ([5, 3, 4], []), ([4, 4, 4], [11, 0, 5, 6])):
        lay = layout_from_lengths(torch.tensor(lengths))
        ids = torch.randint(1, 100, (sum(lengths),))
        with torch.no_grad():
            full = enc.forward_unpadded(ids, lay)
            for dtype in (torch.long, torch.int32):
                r = torch.tensor(rows, dtype=dtype)
                torch.testing.assert_close(enc.forward_unpadded(ids, lay, rows=r), full[r.long()], atol=1e-5, rtol=0)


def test_presets_have_the_documented_shapes():
    shapes = {name: (c.num_layers, c.hidden_size) for name, c in ((n, PRESETS[n]()) for n in PRESETS)}
    assert shapes == {
        "bert-tiny": (2, 128),
        "bert-mini": (4, 256),
        "bert-small": (4, 512),
        "bert-medium": (8, 512),
        "bert-base": (12, 768),
        "minilm-l6": (6, 384),
    }
    assert preset("minilm-l6").intermediate_size == 1536 and preset("minilm-l6").num_heads == 12


def test_config_validation_names_the_field():
    with pytest.raises(EncoderforgeError, match="'norm'"):
        EncoderConfig(norm="sandwich")
    with pytest.raises(EncoderforgeError, match="divisible"):
        EncoderConfig(hidden_size=100, num_heads=12)
    with pytest.raises(EncoderforgeError, match=r"unknown field\(s\) \['hiden_size'\]"):
        EncoderConfig.from_dict({"hiden_size": 10})
    assert EncoderConfig.from_dict(preset("bert-mini").to_dict()) == preset("bert-mini")


def test_heads_shapes_and_behaviour():
    torch.manual_seed(0)
    cfg = preset("bert-tiny", vocab_size=100)
    enc = Encoder(cfg).eval()
    ids, mask = _batch()
    with torch.no_grad():
        h = enc(ids, mask)
        assert SequenceClassifier(cfg, 5).eval()(h, mask).shape == (4, 5)
        assert TokenClassifier(cfg, 9).eval()(h).shape == (4, 11, 9)
        span = SpanHead(cfg)(h, mask)
        assert span.start.shape == (4, 11) and span.start[3, 1:].max() < -1e30  # padding never an answer
        mlm = MLMHead(cfg)
        masked = h[mask.bool()][:5]  # sparse: only 5 positions decoded
        assert mlm(masked, enc.embeddings.tok.weight).shape == (5, 100)
        mean = pool(h, mask, "mean")
        torch.testing.assert_close(mean[1], h[1, :3].mean(0))
        assert torch.equal(pool(h, mask, "cls"), h[:, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (FlashAttention varlen kernel)")
def test_cuda_varlen_kernel_matches_eager():
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=100, num_heads=2)).cuda().half().eval()
    ids, mask = _batch()
    ids, mask = ids.cuda(), mask.cuda()
    with torch.no_grad():
        ref = enc.set_attention("eager")(ids, mask)
        out = enc.set_attention("varlen")(ids, mask)
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=2e-3, rtol=0)


def test_a_preset_s_own_sizes_can_be_overridden():
    """model.overrides (and an architecture search) may change a preset's own fields, not only the others."""
    c = preset("bert-tiny", num_layers=4, hidden_size=64, vocab_size=100)
    assert (c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size, c.vocab_size) == (4, 64, 2, 512, 100)
    assert preset("bert-tiny").num_layers == 2  # the preset itself is unchanged
