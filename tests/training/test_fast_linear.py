"""oneDNN training linears: same outputs and gradients as nn.Linear, same parameters and state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from encoderforge.model import Encoder, preset
from encoderforge.model.padding import layout_from_lengths
from encoderforge.training.fast_linear import (
    OneDNNLinear,
    available,
    use_onednn_linears,
)

pytestmark = pytest.mark.skipif(not available(), reason="torch built without oneDNN")


def test_gradients_match_nn_linear():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ref = Encoder(preset("bert-tiny", vocab_size=300, dropout=0.0, attention_dropout=0.0))
    fast = copy.deepcopy(ref)
    assert use_onednn_linears(fast) == 2 * 4 + 1  # qkv, out, fc1, fc2 per layer + pooler
    assert list(fast.state_dict()) == list(ref.state_dict())
    lengths = torch.tensor([7, 30, 2])
    ids = torch.randint(1, 300, (int(lengths.sum()),))
    lay = layout_from_lengths(lengths)
    target = torch.randn(int(lengths.sum()), 128)
    for m in (ref, fast):
        ((m.forward_unpadded(ids, lay) - target) ** 2).mean().backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_swap_keeps_the_parameter_objects():
    lin = nn.Linear(8, 4)
    model = nn.Sequential(lin)
    use_onednn_linears(model)
    assert isinstance(model[0], OneDNNLinear) and model[0].weight is lin.weight and model[0].bias is lin.bias
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(model(x), lin(x), atol=1e-6, rtol=0)


def test_restore_gives_plain_linears_with_the_same_parameters():
    from encoderforge.training.fast_linear import restore_linears

    lin = nn.Linear(8, 4)
    model = nn.Sequential(lin)
    use_onednn_linears(model)
    assert restore_linears(model) == 1
    assert type(model[0]) is nn.Linear and model[0].weight is lin.weight and model[0].bias is lin.bias


def test_swap_sets_a_small_onednn_primitive_cache_unless_the_user_chose_one(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    use_onednn_linears(nn.Sequential(nn.Linear(4, 4)))
    import os

    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    use_onednn_linears(nn.Sequential(nn.Linear(4, 4)))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"


def test_kernel_choice_is_measured_on_the_model_shapes_and_cached(monkeypatch, tmp_path):
    from encoderforge.training.fast_linear import KERNEL_ENV, train_linear_choice, train_linear_kernel, use_training_linears

    monkeypatch.setenv("ENCODERFORGE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    model = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 48))
    c = train_linear_choice(model)
    assert c.source == "measured" and c.task.startswith("train_linear/48x96,96x48@")
    fastest = min(c.ms, key=c.ms.__getitem__)
    assert set(c.ms) == {"onednn", "torch"}
    # the faster one, or within 5% of it the instruction-set default (a near-tie decides nothing)
    assert c.picked == fastest or (c.ms[c.picked] <= 1.05 * c.ms[fastest] and "kept the default" in c.note)
    assert all(e < 1e-5 for e in c.errors.values())  # both checked against float64
    assert train_linear_choice(model).source == "cache"  # a resumed run or another rank takes the same path
    swapped = use_training_linears(model)
    assert swapped == (2 if c.picked == "onednn" else 0)
    assert isinstance(model[0], OneDNNLinear) == (c.picked == "onednn")
    monkeypatch.setenv(KERNEL_ENV, "Torch")  # the override wins over the measurement, any case
    assert train_linear_kernel(nn.Sequential(nn.Linear(48, 96))) == "torch"
    monkeypatch.setenv(KERNEL_ENV, "onednn")
    forced = train_linear_choice(nn.Sequential(nn.Linear(48, 96)))
    assert (forced.picked, forced.source) == ("onednn", "forced")


def test_forced_kernel_that_fails_its_check_falls_back_to_torch(monkeypatch, tmp_path, caplog):
    from encoderforge.training import fast_linear

    monkeypatch.setenv("ENCODERFORGE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(fast_linear.KERNEL_ENV, "onednn")
    real = fast_linear._mm
    monkeypatch.setattr(fast_linear, "_mm", lambda a, b, bias=None: real(a, b, bias) * 1.01)  # a miscompiled kernel
    with caplog.at_level("WARNING"):
        c = fast_linear.train_linear_choice(nn.Sequential(nn.Linear(32, 64)))
    assert (c.picked, c.source) == ("torch", "fallback")
    assert "ENCODERFORGE_TRAIN_LINEAR=onednn failed its numerical check" in c.note and "onednn" in c.rejected
    assert "failed its numerical check" in caplog.text


def test_unknown_kernel_name_is_a_clear_error(monkeypatch):
    from encoderforge import EncoderforgeError
    from encoderforge.training.fast_linear import KERNEL_ENV, train_linear_kernel

    monkeypatch.setenv(KERNEL_ENV, "mkl")
    with pytest.raises(EncoderforgeError, match="ENCODERFORGE_TRAIN_LINEAR='mkl'.*auto, onednn, torch"):
        train_linear_kernel()


def test_an_encoder_is_chosen_for_by_whole_training_steps_and_left_untouched(monkeypatch, tmp_path):
    # isolated GEMMs ranked MKL first while whole steps ranked oneDNN first on the AVX-512 EPYC (docs/results.md,
    # issue 19): with an encoder inside the model the clock runs a forward + backward of (a copy of) that encoder
    from encoderforge.training import fast_linear

    monkeypatch.setenv("ENCODERFORGE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(fast_linear.KERNEL_ENV, raising=False)
    torch.manual_seed(0)
    model = nn.ModuleDict({"encoder": Encoder(preset("bert-tiny", vocab_size=300)), "head": nn.Linear(128, 3)})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    c = fast_linear.train_linear_choice(model)
    assert c.source == "measured" and c.task.startswith("train_step/") and set(c.ms) == {"onednn", "torch"}
    assert c.picked == min(c.ms, key=c.ms.__getitem__) or "kept the default" in c.note
    assert all(e < 1e-5 for e in c.errors.values())  # the GEMMs still checked against float64
    # the user's model: same weights, no gradients, no swapped modules, the RNG stream where it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    # a cache hit builds nothing: no copy of the model, no random inputs
    monkeypatch.setattr(fast_linear.copy, "deepcopy", lambda *_: pytest.fail("deep-copied on a cache hit"))
    monkeypatch.setattr(fast_linear.torch, "randn", lambda *a, **k: pytest.fail("inputs built on a cache hit"))
    assert fast_linear.train_linear_choice(model).source == "cache"


def test_a_frozen_encoder_is_timed_too(monkeypatch, tmp_path):
    # domain adaptation's head phase trains an MLM head over a frozen encoder: the step timer must still run
    from encoderforge.training import fast_linear

    monkeypatch.setenv("ENCODERFORGE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(fast_linear.KERNEL_ENV, raising=False)
    enc = Encoder(preset("bert-tiny", vocab_size=300, max_position=64)).requires_grad_(False)  # rows cut to 64
    c = fast_linear.train_linear_choice(enc)
    assert c.source == "measured" and set(c.ms) == {"onednn", "torch"}
    assert not any(p.requires_grad for p in enc.parameters())  # the user's frozen encoder stays frozen
