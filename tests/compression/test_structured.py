"""Structured pruning: data-driven head / neuron / layer scores (checked against the chain rule by hand), and pruning
that shrinks the matrices yet computes exactly what the dense model computes with the removed parts masked out;
the pruned model saves, loads, runs in the Engine and exports to ONNX."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.structured import Importance, importance, masked, prune_structured, prune_to_latency
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder

C, H, I, L = 32, 4, 64, 3  # noqa: E741 - hidden size, heads, FFN width, layers of the tiny test encoder
D = C // H


def tiny(vocab_size: int = 50, **kw) -> Encoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(
        vocab_size=vocab_size, hidden_size=C, num_layers=L, num_heads=H, intermediate_size=I, dropout=0.0, attention_dropout=0.0
    )
    return Encoder(EncoderConfig(**{**cfg.to_dict(), **kw})).eval()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 50, (3, 10), generator=torch.Generator().manual_seed(seed))  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids * mask, mask


def losses(enc: nn.Module, n: int = 2) -> list:
    """n batches of a regression task: squared error of the real tokens' states to a fixed random target."""
    fns = []
    for s in range(n):
        ids, mask = batch(seed=10 + s)
        target = torch.randn(*ids.shape, C, generator=torch.Generator().manual_seed(s))  # (B, T, C)
        fns.append(lambda ids=ids, mask=mask, target=target: (((enc(ids, mask) - target) ** 2) * mask[..., None]).sum())
    return fns


def close_on_real_tokens(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, tol: float = 1e-5) -> None:
    m = mask[..., None].bool()
    torch.testing.assert_close(a * m, b * m, atol=tol, rtol=tol)


def keep_masks(kept: list[list[int]], size: int) -> list[torch.Tensor]:
    """0/1 masks of `size` entries with ones at the kept indices, one per layer."""
    return [torch.zeros(size).index_fill_(0, torch.tensor(k, dtype=torch.long), 1.0) for k in kept]


# ---- scores -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["taylor", "fisher"])
def test_scores_equal_the_chain_rule_computed_by_hand(method):
    """dL/dm_h = sum over tokens and the head's D channels of z * dL/dz (z: attn.out's input, the concatenated head
    outputs); dL/dm_j = sum over tokens of a_j * dL/da_j (a: mlp.fc2's input). Taylor sums |g| over batches, Fisher g^2."""
    enc = tiny()
    fns = losses(enc)
    imp = importance(enc, fns, method=method)
    assert all(p.grad is None for p in enc.parameters())  # scoring leaves no gradients behind
    heads, neurons = [torch.zeros(H) for _ in range(L)], [torch.zeros(I) for _ in range(L)]
    for fn in fns:
        seen: list[torch.Tensor] = []
        hooks = [
            m.register_forward_pre_hook(lambda _, args: seen.append(args[0]) or args[0].retain_grad())
            for block in enc.layers
            for m in (block.attn.out, block.mlp.fc2)
        ]
        fn().backward()
        for h in hooks:
            h.remove()
        for layer in range(L):
            z, a = seen[2 * layer], seen[2 * layer + 1]  # (N, H * D), (N, I): the varlen backend runs unpadded
            g_head = (z * z.grad).view(-1, H, D).sum(dim=(0, 2))  # (H,)
            g_neuron = (a * a.grad).sum(dim=0)  # (I,)
            heads[layer] += g_head.abs() if method == "taylor" else g_head.square()
            neurons[layer] += g_neuron.abs() if method == "taylor" else g_neuron.square()
    for layer in range(L):
        torch.testing.assert_close(imp.heads[layer], heads[layer], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(imp.neurons[layer], neurons[layer], rtol=1e-4, atol=1e-6)
    assert imp.method == method and imp.batches == 2
    shares = imp.layer_scores()  # each layer's share of all head scores + its share of all neuron scores
    assert shares.shape == (L,) and abs(float(shares.sum()) - 2.0) < 1e-5


def test_masks_of_ones_change_nothing_and_hooks_are_removed():
    enc = tiny()
    ids, mask = batch()
    with torch.no_grad():
        ref = enc(ids, mask)
        with masked(enc, [torch.ones(H)] * L, [torch.ones(I)] * L):
            torch.testing.assert_close(enc(ids, mask), ref)
        with masked(enc, [torch.zeros(H)] * L, [torch.ones(I)] * L):
            assert not torch.allclose(enc(ids, mask), ref)
        torch.testing.assert_close(enc(ids, mask), ref)  # the hooks are gone


# ---- pruning equals masking ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "per_layer"])
@pytest.mark.parametrize("activation", ["gelu", "geglu"])
def test_pruned_model_equals_the_masked_dense_model(scope, activation):
    enc = tiny(activation=activation)
    imp = importance(enc, losses(enc))
    dense = copy.deepcopy(enc)
    s = prune_structured(enc, imp, heads=0.5, ffn=0.6, scope=scope)
    assert sum(s.heads_per_layer) == L * H // 2 and min(s.heads_per_layer) >= 1
    if scope == "per_layer":  # each layer keeps its own best: 2 of 4 heads, 26 of 64 neurons
        assert s.heads_per_layer == [2] * L and s.neurons_per_layer == [26] * L
        assert all(set(k) == set(imp.heads[i].topk(2).indices.tolist()) for i, k in enumerate(s.heads))
    else:
        assert sum(s.neurons_per_layer) == L * I - round(0.6 * L * I)
    assert enc.cfg.heads_of(0) == s.heads_per_layer[0] and enc.cfg.ffn_of(L - 1) == s.neurons_per_layer[-1]
    assert (
        s.params_before == sum(p.numel() for p in dense.parameters()) > s.params_after == sum(p.numel() for p in enc.parameters())
    )
    ids, mask = batch()
    with torch.no_grad(), masked(dense, keep_masks(s.heads, H), keep_masks(s.neurons, I)):
        close_on_real_tokens(enc(ids, mask), dense(ids, mask), mask)


def test_dropping_layers_equals_the_dense_model_without_them():
    enc = tiny(norm="pre")
    imp = importance(enc, losses(enc), method="fisher")
    worst = int(imp.layer_scores().argmin())
    ref = copy.deepcopy(enc)
    s = prune_structured(enc, imp, heads=0.25, ffn=0.5, layers=1)
    assert s.layers == [i for i in range(L) if i != worst] and enc.cfg.num_layers == L - 1 == len(s.heads)
    ref.layers = nn.ModuleList(ref.layers[i] for i in s.layers)
    ids, mask = batch()
    with torch.no_grad(), masked(ref, keep_masks(s.heads, H), keep_masks(s.neurons, I)):
        close_on_real_tokens(enc(ids, mask), ref(ids, mask), mask)


# ---- a pruned model is an ordinary model: save / load, Engine, ONNX -------------------------------------------------


def _non_uniform(vocab_size: int = 50) -> Encoder:
    enc = tiny(vocab_size=vocab_size)
    prune_structured(enc, importance(enc, losses(enc)), heads=0.4, ffn=0.5)
    assert enc.cfg.layer_heads is not None and enc.cfg.layer_intermediate is not None  # really per-layer widths
    return enc


def test_pruned_model_saves_loads_and_runs_in_the_engine(minilm_path, tmp_path):
    from encoderforge.inference.engine import Engine
    from encoderforge.inference.onnx_export import encode_padded
    from encoderforge.model import checkpoint
    from encoderforge.tokenization import load_tokenizer

    enc = _non_uniform(vocab_size=30522)
    checkpoint.save(enc, tmp_path / "ck", tokenizer_dir=minilm_path)
    back = checkpoint.load(tmp_path / "ck").encoder
    assert back.cfg == enc.cfg
    texts = ["a short one", "the licensee shall keep this notice in all copies of the software", "ok"]
    ids, mask = encode_padded(load_tokenizer(minilm_path), texts, max_length=64)
    with torch.no_grad():
        ref = enc(ids, mask)  # (B, T, C) the unpacked model in memory
        assert torch.equal(back(ids, mask), ref)
    states = Engine.from_pretrained(tmp_path / "ck", pack=True).token_states(texts)  # oneDNN-packed copy
    for i, row in enumerate(states):
        n = int(mask[i].sum())
        torch.testing.assert_close(torch.from_numpy(row), ref[i, :n], atol=1e-5, rtol=1e-5)


def test_pruned_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from encoderforge.inference.onnx_export import export_onnx, onnx_session, run_onnx

    enc = _non_uniform()
    ids, mask = batch()
    path = export_onnx(enc, tmp_path / "pruned.onnx")
    got = torch.from_numpy(run_onnx(onnx_session(path), ids, mask))
    with torch.no_grad():
        close_on_real_tokens(got, enc(ids, mask), mask, tol=1e-4)


# ---- latency target ------------------------------------------------------------------------------------------------


def weight_ms(model: nn.Module) -> float:
    """A deterministic latency model for the search: 1 ms per 1,000 weights."""
    return sum(p.numel() for p in model.parameters()) / 1000


def test_prune_to_latency_takes_the_smallest_step_that_meets_the_target():
    enc = tiny()
    imp = importance(enc, losses(enc))
    dense = copy.deepcopy(enc)
    target = weight_ms(dense) - 15.0
    s = prune_to_latency(enc, imp, target, weight_ms, step=0.1)
    assert s.latency_ms == weight_ms(enc) <= target and s.fraction is not None
    one_step_less = copy.deepcopy(dense)
    prune_structured(one_step_less, imp, heads=s.fraction - 0.1, ffn=s.fraction - 0.1)
    assert weight_ms(one_step_less) > target
    assert prune_to_latency(dense, imp, 1e9, weight_ms).fraction == 0.0  # already fast enough: nothing removed


def test_unreachable_latency_names_the_best_and_leaves_the_model_unchanged():
    enc = tiny()
    imp = importance(enc, losses(enc))
    before = copy.deepcopy(enc.state_dict())
    with pytest.raises(EncoderforgeError, match=r"best latency reached is \d+\.\d+ ms .* > target_ms=1.0.*unchanged"):
        prune_to_latency(enc, imp, 1.0, weight_ms, max_fraction=0.5)
    assert enc.cfg.layer_heads is None and all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())


# ---- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda e, imp: prune_structured(e, imp, heads=1.0), r"heads=1.0 must be a fraction in \[0, 1\)"),
        (lambda e, imp: prune_structured(e, imp, ffn=-0.1), r"ffn=-0.1 must be a fraction in \[0, 1\)"),
        (lambda e, imp: prune_structured(e, imp, layers=L), r"layers=3 must be an integer in 0..2"),
        (lambda e, imp: prune_structured(e, imp, scope="local"), r"scope='local'.*'global', 'per_layer'"),
        (lambda e, imp: prune_structured(e, imp, heads=0.9), r"heads=0.9 asks to remove 11 of 12 heads.*at most 9"),
        (lambda e, imp: prune_structured(e, imp, heads=0.9, scope="per_layer"), "would remove all 4 heads of layer 0"),
        (lambda e, imp: prune_structured(e, Importance(imp.heads[:2], imp.neurons[:2]), heads=0.1), "recompute importance"),
        (lambda e, imp: importance(e, losses(e), method="l1"), r"method='l1'.*'taylor', 'fisher'"),
        (lambda e, imp: importance(e, []), "loss_batches is empty"),
        (lambda e, imp: importance(e, [lambda: torch.tensor(1.0)]), r"loss_batches\[0\] returned a loss that does not depend"),
        (lambda e, imp: importance(e, [lambda: e(*batch())]), r"loss_batches\[0\] returned a tensor of shape \(3, 10, 32\)"),
        (lambda e, imp: prune_to_latency(e, imp, 0.0, weight_ms), "target_ms=0.0 must be positive"),
        (lambda e, imp: prune_to_latency(e, imp, 5.0, weight_ms, step=0.95), r"step=0.95.*0 < step <= max_fraction < 1"),
    ],
)
def test_bad_requests_fail_with_a_message_and_change_nothing(call, match):
    enc = tiny()
    imp = importance(enc, losses(enc))
    before = copy.deepcopy(enc.state_dict())
    with pytest.raises(EncoderforgeError, match=match):
        call(enc, imp)
    after = enc.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert enc.cfg.layer_heads is None and enc.cfg.layer_intermediate is None


# ---- the real MiniLM -----------------------------------------------------------------------------------------------


def test_minilm_pruned_by_fisher_scores_matches_its_masked_dense_model(minilm_path, real_texts):
    from encoderforge.inference.onnx_export import encode_padded
    from encoderforge.model import checkpoint
    from encoderforge.model.heads import pool
    from encoderforge.tokenization import load_tokenizer

    enc = checkpoint.load(minilm_path).encoder
    tok = load_tokenizer(minilm_path)
    pairs = [encode_padded(tok, real_texts[i : i + 4], max_length=48) for i in (0, 4)]

    def pair_loss(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # neighbouring texts should embed alike
        vec = nn.functional.normalize(pool(enc(ids, mask), mask, "mean"), dim=-1)  # (B, C)
        return (vec[:-1] - vec[1:]).square().sum()

    imp = importance(enc, [lambda b=b: pair_loss(*b) for b in pairs], method="fisher")
    dense = copy.deepcopy(enc)
    s = prune_structured(enc, imp, heads=0.25, ffn=0.25)
    assert sum(s.heads_per_layer) == 54 and sum(s.neurons_per_layer) == 6912
    ids, mask = pairs[0]
    with torch.no_grad(), masked(dense, keep_masks(s.heads, 12), keep_masks(s.neurons, 1536)):
        close_on_real_tokens(enc(ids, mask), dense(ids, mask), mask, tol=1e-4)
