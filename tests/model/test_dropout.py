"""model.dropout: the keep-mask has the asked rate, the output and gradient are torch's inverted dropout for that
mask, masks follow torch's seed, and CPU training attention with dropout is the math SDPA computes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from encoderforge.model import Encoder, preset
from encoderforge.model.attention import attend
from encoderforge.model.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keep_share_matches_one_minus_p(p):
    torch.manual_seed(0)
    keep = keep_mask((1000, 999), p)  # odd size: the last draw's words are partly used
    assert keep.dtype == torch.bool and keep.shape == (1000, 999)
    share = keep.float().mean().item()
    sd = math.sqrt(p * (1 - p) / keep.numel())
    assert abs(share - (1 - p)) < 5 * sd, (share, 1 - p)
    # no position is biased: every column and both halves of the words keep close to 1 - p
    cols = keep.float().mean(dim=0)
    assert (cols - (1 - p)).abs().max().item() < 6 * math.sqrt(p * (1 - p) / 1000)
    words = keep.flatten()[:999_000].view(-1, 4).float().mean(dim=0)  # each of the four 16-bit words of a draw
    assert (words - (1 - p)).abs().max().item() < 5 * math.sqrt(p * (1 - p) / 249_750)


def test_keep_mask_at_the_ends_of_p():
    assert keep_mask((4096,), 0.0).all() and not keep_mask((4096,), 1.0).any()
    assert not keep_mask((4096,), 1 - 1e-6).any()  # rounds to 65536 / 65536: the int16 threshold must not wrap
    assert keep_mask((0,), 0.1).shape == (0,)


def test_output_and_gradient_are_inverted_dropout_of_the_mask():
    x = torch.randn(64, 48, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.2)
    torch.manual_seed(3)
    keep = keep_mask(x.shape, 0.2)
    torch.testing.assert_close(y, x.detach() * keep / 0.8)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * keep / 0.8)
    assert 0 < int((y == 0).sum()) < y.numel()


def test_seeded_reproducible_and_identity_when_off():
    x = torch.randn(10, 100)
    torch.manual_seed(1)
    a = dropout(x, 0.1)
    torch.manual_seed(1)
    b = dropout(x, 0.1)
    assert torch.equal(a, b) and not torch.equal(a, dropout(x, 0.1))
    assert dropout(x, 0.0) is x and dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    m = Dropout(0.3).eval()
    assert m(x) is x
    with pytest.raises(ValueError, match="not in"):
        Dropout(1.5)


def test_attention_with_dropout_is_sdpa_math_for_the_same_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :]
    torch.manual_seed(7)
    out = attend(q, k, v, mask, 0.3)
    torch.manual_seed(7)
    keep = keep_mask((2, 3, 5, 5), 0.3)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(out, (probs * keep / 0.7) @ v, atol=1e-6, rtol=1e-5)
    # no dropout: torch's SDPA itself
    torch.testing.assert_close(attend(q, k, v, mask, 0.0), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("masked,tq", [(True, 5), (False, 5), (True, 3)])
def test_fast_attention_math_has_the_reference_values_and_gradients(masked, tq):
    """math_attention (one baddbmm for scale + mask, the dropout scale on the output) against the textbook formula
    with the same dropout mask: outputs and q/k/v gradients; also fewer queries than keys (rows_attention)."""
    from encoderforge.model.attention import math_attention

    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :] if masked else None
    torch.manual_seed(3)
    q0, k0, v0 = torch.randn(2, 3, tq, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    w = torch.randn(2, 3, tq, 8)
    results = []
    for fast in (True, False):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        torch.manual_seed(11)
        if fast:
            out = math_attention(q, k, v, mask, 0.25)
        else:
            keep = keep_mask((2, 3, tq, 5), 0.25)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = (scores.softmax(-1) * keep / 0.75) @ v
        (out * w).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert results[0][1].abs().sum() > 0


def test_training_encoder_drops_and_backends_agree_on_the_masks():
    """Same seed, same masks: the padded eager and sdpa backends give the same training-mode outputs."""
    cfg = dict(vocab_size=100, dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    eager = Encoder(preset("bert-tiny", attention="eager", **cfg)).train()
    sdpa = Encoder(preset("bert-tiny", attention="sdpa", **cfg)).train()
    sdpa.load_state_dict(eager.state_dict())
    ids = torch.randint(1, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    outs = []
    for m in (eager, sdpa):
        torch.manual_seed(5)
        outs.append(m(ids, mask))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    torch.manual_seed(5)
    assert not torch.allclose(eager.eval()(ids, mask), outs[0])  # dropout did something in training mode
