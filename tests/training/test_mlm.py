"""MaskedLM: sparse prediction equals the dense decoder at the masked positions; tied decoder; MiniLM import."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from encoderforge import EncoderforgeError
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.shards import load_documents
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.padding import layout_from_lengths
from encoderforge.tasks.mlm import MaskedLM, MLMTask
from encoderforge.tokenization import load_tokenizer


def _task(legal_shards, small_tokenizer, **kw):
    tok = load_tokenizer(small_tokenizer)
    return MLMTask(
        load_documents(legal_shards, "train"),
        load_documents(legal_shards, "eval"),
        MaskVocab.from_tokenizer(tok),
        MaskingConfig(ratio=0.3, strategy="whole_word"),
        max_len=64,
        batch_rows=4,
        **kw,
    )


def test_sparse_loss_equals_dense_decoder_at_masked_positions(legal_shards, small_tokenizer):
    task = _task(legal_shards, small_tokenizer)
    batch = next(task.train_batches(0))[0]
    assert batch.input_ids.numel() > 200 and 0.2 < batch.positions.numel() / batch.input_ids.numel() < 0.35
    torch.manual_seed(0)
    model = MaskedLM(Encoder(preset("bert-tiny", vocab_size=2000))).eval()
    out = task.loss(model, batch)
    with torch.no_grad():  # reference: decode every token, then pick the masked ones
        hidden = model.encoder.forward_unpadded(batch.input_ids, layout_from_lengths(batch.lengths))
        dense = model.mlm(hidden, model.encoder.embeddings.tok.weight)  # (N, V)
        ref = F.cross_entropy(dense[batch.positions], batch.labels, reduction="sum")
    torch.testing.assert_close(out.total, ref, rtol=1e-5, atol=1e-4)
    assert out.count == batch.labels.numel() and out.tokens == batch.input_ids.numel()
    assert out.total.item() / out.count > np.log(2000) - 1.5  # untrained: near uniform over the vocabulary


def test_last_layer_runs_on_the_masked_positions_only(legal_shards, small_tokenizer):
    """The loss reads the masked positions only, so the last layer's MLP sees M rows while earlier layers see all N;
    return_hidden (the anchored objective reads every token) keeps the full last layer."""
    task = _task(legal_shards, small_tokenizer)
    batch = next(task.train_batches(0))[0]
    model = MaskedLM(Encoder(preset("bert-tiny", vocab_size=2000)))
    seen = []
    for block in model.encoder.layers:
        block.mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    task.loss(model, batch).total.backward()
    N, M = batch.input_ids.numel(), batch.positions.numel()
    assert seen == [N, M] and M < N / 2
    seen.clear()
    logits, hidden = model(batch.input_ids, batch.lengths, batch.positions, return_hidden=True)
    assert seen == [N, N] and logits.shape[0] == M and hidden.shape[0] == N


def test_decoder_is_tied_and_pooler_frozen(legal_shards, small_tokenizer):
    task = _task(legal_shards, small_tokenizer)
    model = MaskedLM(Encoder(preset("bert-tiny", vocab_size=2000)))
    assert not any("decoder" in n for n, _ in model.named_parameters())  # no separate (V, C) matrix
    task.loss(model, next(task.train_batches(0))[0]).total.backward()
    emb = model.encoder.embeddings.tok.weight.grad
    assert emb is not None and emb.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.pooler.parameters())


def test_eval_batches_are_fixed_and_split_over_ranks(legal_shards, small_tokenizer):
    one = _task(legal_shards, small_tokenizer, eval_rows=8)
    a, b = one.eval_batches(), one.eval_batches()
    assert a is b and sum(x.lengths.numel() for x in a) >= 8
    r0 = _task(legal_shards, small_tokenizer, eval_rows=8, rank=0, world=2).eval_batches()
    r1 = _task(legal_shards, small_tokenizer, eval_rows=8, rank=1, world=2).eval_batches()
    n = lambda bs: sum(x.labels.numel() for x in bs)  # noqa: E731
    assert n(r0) + n(r1) == n(a)  # the ranks share the same held-out rows and masks


def test_continued_pretraining_from_minilm_gets_fresh_head(minilm_path):
    from encoderforge.model import checkpoint

    model = MaskedLM.from_checkpoint(minilm_path)
    ref = checkpoint.load(minilm_path).encoder
    torch.testing.assert_close(model.encoder.layers[3].mlp.fc1.weight, ref.layers[3].mlp.fc1.weight)
    assert model.encoder.cfg.attention == "varlen" and model.mlm.bias.abs().sum() == 0  # fresh head
    tok = load_tokenizer(minilm_path)
    enc = tok.encode("the licensee shall indemnify the [MASK] against all claims")
    ids = torch.tensor(enc.ids)
    pos = torch.tensor([enc.tokens.index("[MASK]")])
    logits = model.eval()(ids, torch.tensor([len(ids)], dtype=torch.int32), pos)
    assert logits.shape == (1, 30522)
    with pytest.raises(EncoderforgeError, match="no MLM head in this checkpoint"):  # evaluation needs a trained head
        MaskedLM.from_checkpoint(minilm_path, require_head=True)


def test_objectives_are_registered_and_selected_by_config(legal_shards, small_tokenizer, tmp_path):
    """MLM, ELECTRA and anchored MLM come from one registry (tasks/objectives.py), not a branch per name."""
    from encoderforge.recipes.pretrain import build_model, load_config, select_objective
    from encoderforge.tasks.anchor import AnchoredMLMTask
    from encoderforge.tasks.electra import Electra, ElectraTask
    from encoderforge.tasks.objectives import OBJECTIVES

    assert set(OBJECTIVES) == {"mlm", "electra", "anchored_mlm"}
    base = [f"model.tokenizer={small_tokenizer}", "data.max_len=64"]
    mlm_cfg = load_config(None, base)
    electra_cfg = load_config(None, [*base, "objective=electra", "electra.disc_weight=7", "electra.generator_width=0.5"])
    anchored_cfg = load_config(None, [*base, f"model.init_from={tmp_path}", "model.anchor_weight=2"])
    for cfg, name in ((mlm_cfg, "mlm"), (electra_cfg, "electra"), (anchored_cfg, "anchored_mlm")):
        assert select_objective(cfg)[0] is OBJECTIVES[name]
    assert isinstance(build_model(mlm_cfg, 2000), MaskedLM)
    electra = build_model(electra_cfg, 2000)
    assert isinstance(electra, Electra) and electra.generator.cfg.hidden_size == 64
    task = _task(legal_shards, small_tokenizer)
    obj, args = select_objective(electra_cfg)
    made = obj.task(task, electra, args, lambda enc: enc)
    assert isinstance(made, ElectraTask) and made.disc_weight == 7.0 and made.data is task
    model = MaskedLM(Encoder(preset("bert-tiny", vocab_size=2000)))
    obj, args = select_objective(anchored_cfg)
    started = []
    anchored = obj.task(task, model, args, lambda enc: started.append(enc) or enc)
    assert isinstance(anchored, AnchoredMLMTask) and anchored.weight == 2.0 and started == [model.encoder]
    assert OBJECTIVES["mlm"].task(task, model, args, lambda enc: enc) is task  # plain MLM is the data's own task
