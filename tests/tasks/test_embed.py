"""`finetune embed`: the pairs reader, the no-duplicates sampler, an end-to-end run on real license pairs (rule
snippet -> its license text) with the real MiniLM, prediction = the Engine on the saved model, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, read_dataset
from encoderforge.recipes.finetune import finetune
from encoderforge.tasks.embed import no_duplicate_batches, ranking_metrics


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reader_takes_negatives_scores_and_names_bad_records(tmp_path):
    schema = Schema(label_type="pairs")
    f = write_jsonl(
        tmp_path / "p.jsonl", [{"query": "q", "positive": "d", "negatives": ["n1", "n2"]}, {"query": "q2", "positive": "d2"}]
    )
    ds = read_dataset(f, schema)
    assert [(e.texts, e.label) for e in ds.examples] == [(("q", "d"), ["n1", "n2"]), (("q2", "d2"), [])]
    g = write_jsonl(tmp_path / "g.jsonl", [{"query": "a", "positive": "b", "negatives": 0.5}])
    assert read_dataset(g, schema).examples[0].label == 0.5
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "positive": "d"}, {"query": "q", "positive": " "}])
    with pytest.raises(EncoderforgeError, match=r"bad.jsonl:2: field 'positive' is missing, empty"):
        read_dataset(bad, schema)
    neg = write_jsonl(tmp_path / "neg.jsonl", [{"query": "q", "positive": "d", "negatives": ["", "x"]}])
    with pytest.raises(EncoderforgeError, match=r"neg.jsonl:1: field 'negatives' must be a list of non-empty"):
        read_dataset(neg, schema)


def test_no_duplicate_batches_keep_every_text_once_per_batch():
    rng = np.random.default_rng(0)
    texts = [(int(rng.integers(0, 40)), 100 + int(rng.integers(0, 12))) for _ in range(90)]  # positives recur often
    batches = no_duplicate_batches(texts, 8, seed=3, epoch=0)
    assert len(batches) == 12  # ceil(90 / 8): the schedule's steps per epoch
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used)) and len(used) <= 90
    for b in batches:
        ids = [t for i in b for t in texts[i]]
        assert len(ids) == len(set(ids)) and len(b) <= 8
    assert batches == no_duplicate_batches(texts, 8, seed=3, epoch=0)  # resume-exact
    assert batches != no_duplicate_batches(texts, 8, seed=3, epoch=1)
    # 12 texts of positives in batches of 8 -> a plain random batching would repeat some: the sampler never does
    assert len(used) >= 80


def test_ranking_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.1, 0.7]])
    m = ranking_metrics(scores, [(0, 1), (1, 2), (1, 0)])
    # query 0: relevant doc 1 at rank 2; query 1: docs 2 (rank 1) and 0 (rank 2) both relevant
    assert m["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["recall@1"] == pytest.approx((0 + 0.5) / 2)
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1.0) / 2)


def test_finetune_embed_end_to_end_on_real_license_pairs(minilm_path, license_pairs, tmp_path, ft_config):
    from encoderforge.inference.engine import Engine
    from encoderforge.recipes.predict import Predictor

    rows = license_pairs
    train = write_jsonl(tmp_path / "train.jsonl", [r for i, r in enumerate(rows) if i % 3])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[::3])
    cfg = ft_config(
        "embed",
        minilm_path,
        tmp_path / "run",
        {"data.train": str(train), "data.dev": str(dev), "data.test": str(dev), "finetune.max_length": 96,
         "finetune.epochs": 1, "train.batch_rows": 8, "train.lr": 5e-5, "embed.dims": [96]},
    )  # fmt: skip
    r = finetune(cfg)
    m = r.metrics
    assert m["primary"] == "ndcg@10" and m["task"] == "embed"
    assert {"ndcg@10", "mrr@10", "recall@1", "recall@10", "ndcg@10@96", "loss"} <= set(m["test"])
    assert 0 < m["test"]["ndcg@10"] <= 1 and m["test"]["n"] == len({r["query"] for r in rows[::3]})
    curve = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_ndcg@10" in c for c in curve)  # the loop's dev evaluation is the retrieval score
    meta = json.loads((tmp_path / "run" / "task.json").read_text())
    assert meta["kind"] == "embed" and meta["pooling"] == "mean" and meta["matryoshka_dims"] == [96]
    # prediction and the plain Engine on the saved model give the same normalised vectors
    texts = [rows[0]["query"], rows[1]["positive"]]
    got = np.array([p["embedding"] for p in Predictor.load(tmp_path / "run").predict(texts)])
    want = Engine.from_pretrained(tmp_path / "run" / "model", max_length=96).embed(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the fine-tuned model's vectors changed: it is not the start model
    start = Engine.from_pretrained(minilm_path, max_length=96).embed(texts)
    assert np.abs(start - want).max() > 1e-3


def test_embed_bad_settings_are_one_line_errors(minilm_path, license_pairs, tmp_path, ft_config):
    train = write_jsonl(tmp_path / "t.jsonl", license_pairs[:12])
    with pytest.raises(EncoderforgeError, match=r"embed.dims: 999 is not in 1..384"):
        finetune(ft_config("embed", minilm_path, tmp_path / "a", {"data.train": str(train), "embed.dims": [999]}))
    with pytest.raises(EncoderforgeError, match=r"embed.dim_weights: 1 weight for 2 widths in embed.dims \[192, 96\]"):
        finetune(ft_config("embed", minilm_path, tmp_path / "w", {"data.train": str(train), "embed.dims": [192, 96],
                                                                 "embed.dim_weights": [2.0]}))  # fmt: skip
    with pytest.raises(EncoderforgeError, match=r"embed.dim_weights: -1.0 is not a positive weight"):
        finetune(ft_config("embed", minilm_path, tmp_path / "v", {"data.train": str(train), "embed.dims": [96],
                                                                 "embed.dim_weights": [-1.0]}))  # fmt: skip
    with pytest.raises(EncoderforgeError, match=r"embed.dim_weights\[0\]: must be a finite number, got inf"):
        finetune(ft_config("embed", minilm_path, tmp_path / "i", {"data.train": str(train), "embed.dims": [96],
                                                                 "embed.dim_weights": [float("inf")]}))  # fmt: skip
    with pytest.raises(EncoderforgeError, match=r"embed.dim_weights weighs the Matryoshka widths: set embed.dims"):
        finetune(ft_config("embed", minilm_path, tmp_path / "n", {"data.train": str(train), "embed.dim_weights": [2.0]}))
    with pytest.raises(EncoderforgeError, match=r"embed.dims: 96 appears twice"):
        finetune(ft_config("embed", minilm_path, tmp_path / "u", {"data.train": str(train), "embed.dims": [96, 96]}))
    with pytest.raises(EncoderforgeError, match=r"embed loss 'cosent' needs every row's negatives/score field to be a number"):
        finetune(ft_config("embed", minilm_path, tmp_path / "b", {"data.train": str(train), "embed.loss": "cosent"}))
    mixed = write_jsonl(
        tmp_path / "m.jsonl", [{"query": "a", "positive": "b", "negatives": 1.0}, {"query": "c", "positive": "d"}] * 4
    )
    with pytest.raises(EncoderforgeError, match="mix graded scores and negatives"):
        finetune(ft_config("embed", minilm_path, tmp_path / "c", {"data.train": str(mixed)}))


def test_length_groups_forward_equals_one_packed_forward(minilm_path):
    """Short queries and long documents run as two packed forwards: same vectors as one forward (eval mode)."""
    from encoderforge.model import checkpoint
    from encoderforge.model.heads import pool
    from encoderforge.model.padding import pad_packed
    from encoderforge.tasks.embed import EmbedModel, length_groups

    lengths = torch.tensor([12, 200, 9, 180, 15, 220])
    groups = length_groups(lengths)
    assert [sorted(g.tolist()) for g in groups] == [[0, 2, 4], [1, 3, 5]]
    assert len(length_groups(torch.tensor([100, 120, 110]))) == 1  # similar lengths: one group
    model = EmbedModel(checkpoint.load(minilm_path).encoder).eval()
    ids = torch.cat(
        [torch.cat([torch.tensor([101]), torch.randint(1000, 20000, (n - 2,)), torch.tensor([102])]) for n in lengths.tolist()]
    )
    with torch.no_grad():
        got = model(ids, lengths)
        out = model.encoder.forward_packed(ids, lengths)
        grid = pad_packed(out.hidden, out.layout)
        want = pool(grid.hidden, grid.mask, "mean")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_2d_matryoshka_layers_equal_a_cut_encoder_and_train(minilm_path, license_pairs, tmp_path, ft_config):
    """The pooled output of layer 2 read by the model's hook = the same encoder cut to 2 layers; `embed.layers`
    trains every listed layer (losses summed) and the run still saves a whole model."""
    import copy

    from encoderforge.model import checkpoint
    from encoderforge.model.surgery import remove_layers
    from encoderforge.tasks.embed import EmbedModel

    enc = checkpoint.load(minilm_path).encoder
    cut = copy.deepcopy(enc)
    remove_layers(cut, [0, 1])
    model, short = EmbedModel(enc, layers=[2]).eval(), EmbedModel(cut).eval()
    ids = torch.tensor([101, 2054, 2003, 1037, 6105, 102, 101, 7592, 102])
    lengths = torch.tensor([6, 3])
    with torch.no_grad():
        both, two = model(ids, lengths), short(ids, lengths)
    assert both.shape == (2, 2, 384)
    torch.testing.assert_close(both[0], two, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        both[1], EmbedModel(checkpoint.load(minilm_path).encoder).eval()(ids, lengths), atol=1e-5, rtol=1e-5
    )
    train = write_jsonl(tmp_path / "t.jsonl", license_pairs[:24])
    values = {"data.train": str(train), "data.dev": str(train), "finetune.max_length": 48, "finetune.epochs": 1,
              "train.batch_rows": 8, "embed.layers": [2], "embed.dims": [96]}  # fmt: skip
    r = finetune(ft_config("embed", minilm_path, tmp_path / "run", values))
    assert json.loads((tmp_path / "run" / "task.json").read_text())["matryoshka_layers"] == [2]
    assert r.metrics["dev"]["ndcg@10"] > 0
    with pytest.raises(EncoderforgeError, match=r"embed.layers: 7 is not in 1..6"):
        finetune(ft_config("embed", minilm_path, tmp_path / "bad", {**values, "embed.layers": [7]}))
