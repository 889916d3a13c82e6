"""ELECTRA: shared embeddings, the replaced/original rule, learning, exact resume and accumulation, config, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from run_helpers import read_losses, run_pretrain_torchrun, sigkill_after_checkpoint
from typer.testing import CliRunner

from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.shards import load_documents
from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.recipes.pretrain import load_config, pretrain
from encoderforge.tasks.electra import (
    Electra,
    ElectraTask,
    corrupt,
    generator_config,
    sample,
)
from encoderforge.tasks.mlm import MLMTask
from encoderforge.tokenization import load_tokenizer

CONFIG = Path(__file__).parents[2] / "configs" / "pretrain-electra-tiny.yaml"
ELECTRA = {
    "objective": "electra",
    "masking.strategy": "token",
    "masking.ratio": 0.15,
    "masking.mask_prob": 0.85,
    "masking.random_prob": 0.0,
}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the resume subprocess uses 1 thread too: identical kernels, identical numbers
    yield
    torch.set_num_threads(n)


def _task(legal_shards, small_tokenizer, **kw) -> ElectraTask:
    tok = load_tokenizer(small_tokenizer)
    mlm = MLMTask(
        load_documents(legal_shards, "train"),
        load_documents(legal_shards, "eval"),
        MaskVocab.from_tokenizer(tok),
        MaskingConfig(ratio=0.15, mask_prob=0.85, random_prob=0.0),
        max_len=64,
        batch_rows=4,
        **kw,
    )
    return ElectraTask(mlm)


def _model(vocab: int = 2000) -> Electra:
    torch.manual_seed(0)
    return Electra(Encoder(preset("bert-tiny", vocab_size=vocab)), width=0.25)


def test_generator_shares_the_discriminator_embeddings(legal_shards, small_tokenizer):
    model = _model()
    tok = model.encoder.embeddings.tok.weight
    assert model.generator.cfg.hidden_size == 32 and model.generator.project.weight.shape == (32, 128)
    # exactly one (V, C) table in the parameters and in what gets saved: the generator owns no embeddings
    big = [n for n, p in model.named_parameters() if p.ndim == 2 and p.shape[0] == 2000]
    assert big == ["encoder.embeddings.tok.weight"]
    shared = [k for k, v in model.state_dict().items() if v.data_ptr() == tok.data_ptr()]
    assert shared == ["encoder.embeddings.tok.weight"]
    batch = next(_task(legal_shards, small_tokenizer).train_batches(0))[0]
    model.eval()
    out = model(batch)
    assert out.gen_logits.shape == (batch.mlm.labels.numel(), 2000)
    assert out.disc_logits.shape == batch.mlm.input_ids.shape  # every real token of the packed batch
    # the generator's MLM loss alone trains the shared token and position tables (they are one tensor each)
    torch.nn.functional.cross_entropy(out.gen_logits, batch.mlm.labels).backward()
    emb = model.encoder.embeddings
    assert tok.grad is not None and tok.grad.abs().sum() > 0 and emb.pos.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.rtd.parameters())  # no RTD loss was used
    with torch.no_grad():  # writing into the discriminator's table changes what the generator predicts
        before = model(batch).gen_logits[:, 7].clone()
        tok[7].mul_(50.0)
        assert not torch.allclose(model(batch).gen_logits[:, 7], before)


def test_a_sample_equal_to_the_original_is_labelled_original():
    original = torch.tensor([2, 10, 11, 12, 13, 3])
    masked = torch.tensor([1, 3, 4])
    ids, replaced = corrupt(original, masked, torch.tensor([10, 99, 13]))  # position 1 and 4: sampled == original
    assert ids.tolist() == [2, 10, 11, 99, 13, 3]
    assert replaced.tolist() == [False, False, False, True, False, False]


def test_end_to_end_labels_follow_the_samples(legal_shards, small_tokenizer):
    batch = next(_task(legal_shards, small_tokenizer).train_batches(0))[0]
    labels = batch.mlm.labels
    common = int(labels.mode().values)  # a token (e.g. "the") that is the original at several masked positions
    assert 0 < int((labels == common).sum()) < labels.numel()
    model = _model().eval()
    with torch.no_grad():
        model.generator.bias[common] = 1e4  # the generator now always samples `common`
        out = model(batch)
    assert (out.sampled == common).all()
    should = torch.zeros_like(out.replaced)
    should[batch.mlm.positions] = labels != common  # replaced only where the original was something else
    assert torch.equal(out.replaced, should)


def test_sampling_is_seeded_per_row_and_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0]])).expand(20000, 4)
    s = sample(logits, [1, 2], [10000, 10000])
    freq = torch.bincount(s, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.015, rtol=0)
    # row 2's samples do not depend on which rows come before it in the micro-batch
    assert torch.equal(sample(logits[:10000], [2], [10000]), s[10000:])


def test_generator_config_fractions():
    disc = preset("bert-base")
    g = generator_config(disc, 0.25, 1 / 3)
    assert (g.hidden_size, g.num_heads, g.head_dim, g.num_layers, g.intermediate_size) == (192, 3, 64, 4, 768)
    assert generator_config(preset("bert-small", position="rope"), 0.3, 1.0).head_dim % 2 == 0


def test_discriminator_learns_in_a_few_dozen_steps(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    final = pretrain(
        load_config(None, tiny_overrides(run, **ELECTRA, **{"train.steps": 36, "train.eval_every": 36, "train.save_every": 36}))
    )
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval_disc_loss" in x]
    assert [e["step"] for e in evals] == [0, 36]
    start, end = evals
    assert end["eval_disc_loss"] < start["eval_disc_loss"] - 0.2, (start, end)  # ~0.69 (chance) at step 0
    # it has at least learned how often tokens are replaced (beating that floor takes hundreds of steps)
    assert start["eval_disc_loss"] > start["eval_disc_prior_loss"] + 0.1
    assert end["eval_disc_loss"] < end["eval_disc_prior_loss"] + 0.02
    assert end["eval_gen_mlm_loss"] < start["eval_gen_mlm_loss"] - 0.5
    assert start["eval_replaced_share"] > 0.95  # an untrained generator almost never guesses the original
    assert 0 < end["eval_disc_accuracy"] <= 1 and 0 <= end["eval_disc_precision"] <= 1
    assert final["eval_disc_loss"] == end["eval_disc_loss"]
    loaded = checkpoint.load(run / "model")  # the discriminator is the encoder; both heads ride along as extras
    assert loaded.encoder.cfg.hidden_size == 128 and loaded.encoder.cfg.num_layers == 2
    assert {"rtd.out.weight", "generator.bias", "generator.project.weight"} <= set(loaded.extra)
    assert not any(k.startswith("mlm.") for k in loaded.extra)
    again = Electra.from_checkpoint(run / "model")  # continuing restores discriminator, head and generator
    torch.testing.assert_close(again.generator.bias, loaded.extra["generator.bias"])


def test_gradient_accumulation_matches_full_batch(tiny_overrides, tmp_path):
    # per-row sampling seeds: micro-batches of 2 rows draw the same samples as the full batch of 8
    over = {
        **ELECTRA,
        "train.steps": 3,
        "train.eval_every": 0,
        "train.save_every": 0,
        "model.overrides": "{dropout: 0.0, attention_dropout: 0.0}",
    }
    pretrain(load_config(None, tiny_overrides(tmp_path / "full", **over)))
    pretrain(load_config(None, tiny_overrides(tmp_path / "acc", **over, **{"train.micro_rows": 2})))
    full, acc = read_losses(tmp_path / "full"), read_losses(tmp_path / "acc")
    assert len(full) == 3
    for s in full:
        assert full[s] == pytest.approx(acc[s], rel=1e-4, abs=1e-4)


def test_sigkilled_electra_run_resumes_on_the_same_curve(tiny_overrides, tmp_path):
    over = {**ELECTRA, "train.steps": 18, "train.save_every": 3, "train.eval_every": 9}
    pretrain(load_config(None, tiny_overrides(tmp_path / "ref", **over)))
    ref = read_losses(tmp_path / "ref")

    run = tmp_path / "killed"
    resumed_from = sigkill_after_checkpoint(tiny_overrides(run, **over), run, 6)  # killed mid-run
    assert 6 <= resumed_from < 18

    pretrain(load_config(None, tiny_overrides(run, **over)))  # same command: resumes from the latest checkpoint
    got = read_losses(run)
    assert sorted(got) == sorted(ref)
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-6, abs=1e-6), s
    end = lambda p: json.loads((p / "metrics.json").read_text())  # noqa: E731
    assert end(run)["eval_disc_loss"] == pytest.approx(end(tmp_path / "ref")["eval_disc_loss"], rel=1e-6)


def test_shipped_config_loads_and_builds():
    from encoderforge.recipes.pretrain import build_model

    cfg = load_config(CONFIG, ["data.max_len=64"])
    assert cfg.objective == "electra" and cfg.electra.disc_weight == 50.0 and cfg.masking.random_prob == 0.0
    model = build_model(cfg, 2000)
    assert isinstance(model, Electra) and model.generator.cfg.hidden_size == 32
    assert load_config(None).objective == "mlm"  # existing configs keep MLM


def test_bad_electra_fields_are_named():
    from encoderforge import EncoderforgeError

    with pytest.raises(EncoderforgeError, match=r"objective='rtd'; use 'mlm' or 'electra'"):
        load_config(None, ["objective=rtd"])
    with pytest.raises(EncoderforgeError, match=r"electra.generator_width=2.0 must be in \(0, 1\]"):
        load_config(None, ["electra.generator_width=2"])
    with pytest.raises(EncoderforgeError, match=r"config.electra: unknown field\(s\) \['lambda'\]"):
        load_config(None, ["electra.lambda=3"])


def test_cli_pretrain_electra_writes_a_loadable_encoder(tiny_overrides, tmp_path):
    from encoderforge.cli.pretrain import app

    run = tmp_path / "cli"
    over = tiny_overrides(run, **{"train.steps": 3, "masking.strategy": "token", "masking.ratio": 0.15})
    res = CliRunner().invoke(app, ["--config", str(CONFIG), *[x for kv in over for x in ("--set", kv)]])
    assert res.exit_code == 0, res.output
    final = json.loads(res.output[res.output.index("{") :])
    assert final["step"] == 3 and 0 < final["eval_disc_loss"] < 1 and final["eval_gen_mlm_loss"] > 0
    loaded = checkpoint.load(run / "model")
    ckpt = checkpoint.load(run / "checkpoints" / "step-00000003")  # the training checkpoint: the same discriminator
    torch.testing.assert_close(loaded.encoder.layers[1].mlp.fc1.weight, ckpt.encoder.layers[1].mlp.fc1.weight)
    assert loaded.encoder.cfg.vocab_size == load_tokenizer(run / "model").get_vocab_size()


def test_two_process_ddp_matches_single_process(tiny_overrides, tmp_path):
    # dropout off (each process draws its own masks); sampling is per row, so the ranks' halves match the whole
    over = {
        **ELECTRA,
        "train.steps": 4,
        "train.eval_every": 2,
        "train.save_every": 4,
        "model.overrides": "{dropout: 0.0, attention_dropout: 0.0}",
    }
    pretrain(load_config(None, tiny_overrides(tmp_path / "single", **over)))
    run_pretrain_torchrun(tiny_overrides(tmp_path / "ddp", **over), tmp_path / "ddp")
    single, ddp = read_losses(tmp_path / "single"), read_losses(tmp_path / "ddp")
    assert sorted(single) == sorted(ddp) == [1, 2, 3, 4]
    for s in single:
        assert ddp[s] == pytest.approx(single[s], rel=1e-4, abs=1e-4), s
    end = lambda p: json.loads((p / "metrics.json").read_text())  # noqa: E731
    ddp_end, single_end = end(tmp_path / "ddp"), end(tmp_path / "single")
    assert ddp_end["eval_disc_loss"] == pytest.approx(single_end["eval_disc_loss"], rel=1e-4)
