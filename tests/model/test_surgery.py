"""Model surgery: one module-swap walk with clear rules, and head / FFN-neuron / layer removal that shrinks the
matrices yet computes exactly what the unpruned model computes with the removed parts zeroed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.model.surgery import (
    encoder_blocks,
    is_cpu_fp32_linear,
    prune_ffn_neurons,
    prune_heads,
    remove_layers,
    replace_modules,
)

C, H, I = 32, 4, 64  # noqa: E741 - hidden size, heads, FFN width of the tiny test encoder


def tiny(**kw) -> Encoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(
        vocab_size=50, hidden_size=C, num_layers=3, num_heads=H, intermediate_size=I, dropout=0.0, attention_dropout=0.0, **kw
    )
    return Encoder(cfg).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 50, (3, 10), generator=torch.Generator().manual_seed(1))  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids * mask, mask


def close_on_real_tokens(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> None:
    m = mask[..., None].bool()
    torch.testing.assert_close(a * m, b * m, atol=1e-5, rtol=1e-5)


# ---- replace_modules ------------------------------------------------------------------------------------------


def test_replace_modules_passes_qualified_names_and_counts():
    enc = tiny()
    seen: list[str] = []

    def pick(name: str, m: nn.Module) -> bool:
        seen.append(name)
        return name.endswith("mlp.fc2")

    assert replace_modules(enc, pick, lambda m: nn.Identity()) == 3
    assert "layers.1.mlp.fc2" in seen and "pooler.dense" in seen and "" not in seen  # the root is never offered
    assert all(isinstance(b.mlp.fc2, nn.Identity) for b in enc.layers)


def test_replacements_and_replaced_modules_are_not_walked_into():
    enc = tiny()
    linears = sum(isinstance(m, nn.Linear) for m in enc.modules())
    # the builder wraps the Linear it gets: walking into the wrapper would wrap it again, forever
    n = replace_modules(enc, lambda _, m: isinstance(m, nn.Linear), lambda m: nn.Sequential(m))
    assert n == linears
    assert sum(isinstance(m, nn.Sequential) for m in enc.modules()) == linears
    # a matched parent is replaced whole: its children are not offered
    offered: list[str] = []
    replace_modules(enc, lambda name, m: offered.append(name) or isinstance(m, nn.ModuleList), copy.deepcopy)
    assert not any(name.startswith("layers.") for name in offered)


def test_a_module_shared_by_two_parents_is_visited_once():
    shared = nn.Sequential(nn.Linear(2, 2))
    model = nn.ModuleDict({"a": shared, "b": shared})
    assert replace_modules(model, lambda _, m: isinstance(m, nn.Linear), lambda m: nn.Identity()) == 1
    assert isinstance(model["b"][0], nn.Identity)


def test_is_cpu_fp32_linear():
    lin = nn.Linear(2, 3)
    assert is_cpu_fp32_linear(lin)
    assert not is_cpu_fp32_linear(lin.to(torch.bfloat16))
    assert not is_cpu_fp32_linear(nn.modules.linear.NonDynamicallyQuantizableLinear(2, 3))  # subclasses differ
    assert not is_cpu_fp32_linear(nn.Identity())


# ---- FFN neurons ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["gelu", "geglu"])
@pytest.mark.parametrize("backend", ["eager", "varlen"])
def test_pruned_ffn_equals_the_original_with_those_neurons_zeroed(activation, backend):
    enc = tiny(activation=activation, attention=backend)
    ids, mask = batch()
    keep = torch.tensor([0, 3, 5, 17, 40, 63])
    drop = torch.ones(I, dtype=torch.bool)
    drop[keep] = False
    ref = copy.deepcopy(enc)
    with torch.no_grad():
        ref.layers[1].mlp.fc2.weight[:, drop] = 0  # a removed neuron no longer reaches the output
    assert prune_ffn_neurons(enc, 1, keep) == I - len(keep)
    mlp = enc.layers[1].mlp
    assert mlp.fc1.weight.shape == ((2 if activation == "geglu" else 1) * len(keep), C)
    assert mlp.fc2.weight.shape == (C, len(keep)) and mlp.fc1.bias.shape == (mlp.fc1.out_features,)
    assert enc.layers[0].mlp.fc2.in_features == I  # other layers untouched
    with torch.no_grad():
        close_on_real_tokens(enc(ids, mask), ref(ids, mask), mask)


def test_ffn_keep_indices_are_sorted_and_deduplicated_and_frozen_weights_stay_frozen():
    enc = tiny()
    enc.requires_grad_(False)
    w = enc.layers[0].mlp.fc1.weight.detach().clone()
    prune_ffn_neurons(enc, 0, [9, 2, 9])
    assert torch.equal(enc.layers[0].mlp.fc1.weight, w[[2, 9]])
    assert not any(p.requires_grad for p in enc.layers[0].mlp.parameters())


# ---- attention heads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "sdpa", "varlen"])
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_pruned_heads_equal_the_original_with_those_heads_zeroed(backend, position):
    enc = tiny(attention=backend, position=position)
    ids, mask = batch()
    D = C // H
    ref = copy.deepcopy(enc)
    with torch.no_grad():  # heads 0 and 2 removed: their output columns no longer reach the output
        for h in (0, 2):
            ref.layers[-1].attn.out.weight[:, h * D : (h + 1) * D] = 0
    assert prune_heads(enc, -1, [3, 1]) == 2
    attn = enc.layers[-1].attn
    assert attn.num_heads == 2 and attn.head_dim == D
    assert attn.qkv.weight.shape == (3 * 2 * D, C) and attn.out.weight.shape == (C, 2 * D)
    with torch.no_grad():
        close_on_real_tokens(enc(ids, mask), ref(ids, mask), mask)


def test_pruned_heads_keep_the_sparse_rows_path_exact():
    """forward_unpadded(rows=...) (sparse MLM prediction) runs the last layer's attention on selected rows."""
    from encoderforge.model.padding import unpad, unpad_layout

    enc = tiny(attention="varlen")
    ids, mask = batch()
    layout = unpad_layout(mask)
    prune_heads(enc, 2, [1])
    rows = torch.tensor([0, 4, 11])
    with torch.no_grad():
        full = enc.forward_unpadded(unpad(ids, layout), layout)  # (N, C)
        part = enc.forward_unpadded(unpad(ids, layout), layout, rows=rows)  # (R, C)
    torch.testing.assert_close(part, full[rows], atol=1e-5, rtol=1e-5)


def test_pruned_model_still_trains():
    enc = tiny().train()
    prune_heads(enc, 0, [0, 1])
    prune_ffn_neurons(enc, 0, range(10))
    ids, mask = batch()
    enc(ids, mask).sum().backward()
    assert enc.layers[0].attn.qkv.weight.grad.shape == (3 * 2 * (C // H), C)
    assert enc.layers[0].mlp.fc1.weight.grad.shape == (10, C)


# ---- layers -----------------------------------------------------------------------------------------------------


def test_remove_layers_keeps_the_chosen_blocks_and_a_matching_config(tmp_path):
    from encoderforge.model import checkpoint

    enc = tiny()
    ids, mask = batch()
    ref = copy.deepcopy(enc)
    ref.layers = nn.ModuleList([ref.layers[0], ref.layers[2]])
    old_cfg = enc.cfg
    assert remove_layers(enc, [2, 0]) == 1
    assert enc.cfg.num_layers == 2 and old_cfg.num_layers == 3  # a new config, the old one is not mutated
    with torch.no_grad():
        close_on_real_tokens(enc(ids, mask), ref(ids, mask), mask)
    checkpoint.save(enc, tmp_path / "ckpt")  # uniform widths: an ordinary checkpoint
    with torch.no_grad():
        close_on_real_tokens(checkpoint.load(tmp_path / "ckpt").encoder.eval()(ids, mask), ref(ids, mask), mask)


def test_surgery_finds_the_encoder_inside_a_task_model():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = tiny(), nn.Linear(C, 2)

    model = Wrapper()
    assert encoder_blocks(model) is model.encoder.layers
    prune_heads(model, 0, [0])
    remove_layers(model, [0])
    assert len(model.encoder.layers) == 1 and model.encoder.cfg.num_layers == 1
    assert model.encoder.layers[0].attn.num_heads == 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda e: prune_heads(e, 0, []), "keep at least one"),
        (lambda e: prune_heads(e, 0, [H]), "0..3"),
        (lambda e: prune_ffn_neurons(e, 5, [0]), "3 layers"),
        (lambda e: prune_ffn_neurons(e, 0, [-1]), "0..63"),
        (lambda e: remove_layers(e, []), "keep at least one"),
        (lambda e: prune_heads(nn.Linear(2, 2), 0, [0]), "no encoder blocks"),
    ],
)
def test_bad_requests_fail_with_a_message_and_change_nothing(call, match):
    enc = tiny()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(EncoderforgeError, match=match):
        call(enc)
    after = enc.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# ---- the config follows the surgery ----------------------------------------------------------------------------


def test_pruning_records_per_layer_widths_in_a_new_config_that_rebuilds_the_model():
    enc = tiny()
    old_cfg = enc.cfg
    prune_heads(enc, 1, [0, 2])
    prune_ffn_neurons(enc, 2, range(10))
    assert enc.cfg.layer_heads == [H, 2, H] and enc.cfg.layer_intermediate == [I, I, 10]
    assert old_cfg.layer_heads is None  # a new config, the old one is not mutated
    assert (enc.cfg.heads_of(1), enc.cfg.ffn_of(2), enc.cfg.ffn_of(0), enc.cfg.head_dim) == (2, 10, I, C // H)
    rebuilt = Encoder(enc.cfg).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in enc.state_dict().items()}
    remove_layers(enc, [1, 2])  # the per-layer lists are sliced with the layers
    assert enc.cfg.num_layers == 2 and enc.cfg.layer_heads == [2, H] and enc.cfg.layer_intermediate == [I, 10]


def test_uniform_widths_collapse_to_the_global_fields():
    enc = tiny()
    for layer in range(3):  # the same FFN width everywhere: the global intermediate_size, no list
        prune_ffn_neurons(enc, layer, range(16))
    assert enc.cfg.intermediate_size == 16 and enc.cfg.layer_intermediate is None
    prune_heads(enc, 0, [1])
    remove_layers(enc, [1, 2])  # the only pruned layer is gone: all layers have num_heads again
    assert enc.cfg.layer_heads is None and enc.cfg.num_heads == H


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(layer_heads=[4, 4]), r"'layer_heads' must list one width per layer \(num_layers=3\)"),
        (dict(layer_intermediate=[64, 0, 64]), "'layer_intermediate' must hold positive integers"),
        (dict(layer_heads=[4, 2.5, 4]), "'layer_heads' must hold positive integers"),
    ],
)
def test_bad_per_layer_widths_are_named(kw, match):
    with pytest.raises(EncoderforgeError, match=match):
        EncoderConfig(hidden_size=C, num_layers=3, num_heads=H, intermediate_size=I, **kw)


def test_the_config_follows_even_when_other_linears_are_wrapped():
    """LoRA or int8 wrappers need not expose a width: the config is edited, not read back from the modules."""
    enc = tiny()
    replace_modules(enc, lambda name, _: name.endswith("mlp.fc2") and not name.startswith("layers.0"), nn.Sequential)
    prune_heads(enc, 2, [0])
    prune_ffn_neurons(enc, 0, [1, 2, 3])
    assert enc.cfg.layer_heads == [H, H, 1] and enc.cfg.layer_intermediate == [3, I, I]
