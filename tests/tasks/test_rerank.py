"""The listwise cross-encoder re-ranker: its loss against a per-group computation, group-intact batches, a real
fine-tuning run on licensedcode pairs (score, predict, re-rank a retrieval run) and its bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from encoderforge import EncoderforgeError
from encoderforge.tasks.rerank import RerankTask, group_scores, listwise_loss
from encoderforge.tokenization import load_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_listwise_loss_equals_a_per_group_softmax_cross_entropy():
    torch.manual_seed(0)
    sizes = torch.tensor([4, 2, 5, 1])
    scores = torch.randn(int(sizes.sum()))
    scores[7] = scores[6] + 1  # group 2 (from index 6): a negative above the relevant document (rank 1)
    total, stats = listwise_loss(group_scores(scores, sizes))
    want, rr, top1, start = 0.0, 0.0, 0, 0
    for n in sizes.tolist():
        g = scores[start : start + n]
        want += float(-F.log_softmax(g, 0)[0])
        rank = int((g[1:] >= g[0]).sum())
        rr, top1, start = rr + 1 / (1 + rank), top1 + (rank == 0), start + n
    assert float(total) == pytest.approx(want, abs=1e-5)
    assert stats == {"rr": pytest.approx(rr), "top1": float(top1)} and top1 <= 3  # group 2 ranks its positive second
    assert float(listwise_loss(group_scores(torch.tensor([0.0]), torch.tensor([1])))[0]) == 0  # a lone positive


def test_batches_keep_each_group_whole_relevant_first_and_replay_on_resume(minilm_path, license_pairs):
    tok = load_tokenizer(minilm_path)
    rows = [
        ((r["query"], r["positive"]), [f"banana {j} of {i}" for j in range(1 + i % 3)]) for i, r in enumerate(license_pairs[:10])
    ]
    task = RerankTask(tok, rows, rows[:4], max_length=48, batch_rows=4, seed=3)
    steps = task.train_batches(0)
    first = [next(steps) for _ in range(5)]
    again = task.train_batches(3)
    for a, b in zip(first[3:], [next(again) for _ in range(2)]):
        assert torch.equal(a[0].seq.input_ids, b[0].seq.input_ids) and torch.equal(a[0].sizes, b[0].sizes)
    cls, sep, banana = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), tok.token_to_id("banana")
    for step in first[:3]:  # one epoch: every group once, as a whole
        b = step[0]
        assert int(b.sizes.sum()) == len(b.seq.lengths) and set(b.sizes.tolist()) <= {2, 3, 4}
        windows = torch.split(b.seq.input_ids, b.seq.lengths.tolist())
        starts = (torch.cumsum(b.sizes, 0) - b.sizes).tolist()
        for s, n in zip(starts, b.sizes.tolist()):
            group = [w.tolist() for w in windows[s : s + n]]
            assert all(w[0] == cls and w[-1] == sep for w in group)
            assert [banana in w for w in group] == [False] + [True] * (n - 1)  # the relevant document first
            assert all(w[1:4] == group[0][1:4] for w in group)  # one query per group
    assert sorted(sum((s[0].sizes.tolist() for s in first[:3]), [])) == sorted(1 + len(r[1]) for r in rows)


def test_rows_without_hard_negatives_fail_naming_the_row(minilm_path):
    tok = load_tokenizer(minilm_path)
    ok = [(("q", "d"), ["n"])]
    with pytest.raises(EncoderforgeError, match=r"^rerank train row 2: hard negatives are none; .*encoderforge index mine") as e:
        RerankTask(tok, [*ok, (("q2", "d2"), [])], ok)
    assert "\n" not in str(e.value)
    with pytest.raises(EncoderforgeError, match=r"^rerank dev row 1: hard negatives are a score"):
        RerankTask(tok, ok, [(("q", "d"), 0.5)])
    with pytest.raises(EncoderforgeError, match=r"^rerank train row 1: hard negatives are none besides copies of the positive"):
        RerankTask(tok, [(("q", "the doc"), ["The  doc"])], ok)
    task = RerankTask(tok, [(("q", "d"), ["d", "n", "N ", "m"])], ok)  # the positive again and a repeat: dropped
    assert task.train_sizes == [3]


def test_finetune_names_the_file_and_line_of_a_row_without_negatives(tiny_model, tmp_path, ft_config):
    from encoderforge.recipes.finetune import finetune

    ok = {"query": "q", "positive": "d", "negatives": ["n"]}
    train = write_jsonl(tmp_path / "train.jsonl", [ok, ok])
    dev = write_jsonl(tmp_path / "dev.jsonl", [ok, ok, {"query": "q", "positive": "d", "negatives": []}])
    cfg = ft_config("rerank", tiny_model, tmp_path / "run", {"data.train": str(train), "data.dev": str(dev)})
    with pytest.raises(EncoderforgeError, match=r"^\S*dev\.jsonl:3: hard negatives are none; .*index mine") as e:
        finetune(cfg)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_finetune_rerank_end_to_end_then_rerank_a_retrieval_run(tiny_model, license_pairs, tmp_path, ft_config):
    from encoderforge.recipes.eval_retrieval import _reranker
    from encoderforge.recipes.finetune import finetune
    from encoderforge.recipes.predict import Predictor

    docs = sorted({r["positive"] for r in license_pairs})
    rows = [
        {"query": r["query"], "positive": r["positive"], "negatives": [d for d in docs if d != r["positive"]][i % 3 :: 7][:3]}
        for i, r in enumerate(license_pairs[:48])
    ]
    train = write_jsonl(tmp_path / "train.jsonl", [r for i, r in enumerate(rows) if i % 4])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[::4])
    cfg = ft_config(
        "rerank",
        tiny_model,
        tmp_path / "run",
        {"data.train": str(train), "data.dev": str(dev), "data.test": str(dev), "finetune.max_length": 64,
         "finetune.epochs": 2, "train.batch_rows": 6, "train.lr": 3e-4},
    )  # fmt: skip
    m = finetune(cfg).metrics
    assert m["task"] == "rerank" and m["primary"] == "mrr"
    t = m["test"]
    assert t["n"] == 12 and 0 <= t["accuracy"] <= 1 and np.isfinite(t["loss"])  # mrr: recomputed below
    meta = json.loads((tmp_path / "run" / "task.json").read_text())
    assert meta["kind"] == "rerank" and meta["text_fields"] == 2 and meta["max_chunks"] == 1
    # prediction scores a `query<TAB>document` line; the test group's MRR recomputed from those scores
    p = Predictor.load(tmp_path / "run")
    rr = []
    for r in rows[::4]:
        s = [x["score"] for x in p.predict([f"{r['query']}\t{' '.join(d.split())}" for d in [r["positive"], *r["negatives"]]])]
        rr.append(1 / (1 + sum(x >= s[0] for x in s[1:])))
    assert np.mean(rr) == pytest.approx(t["mrr"], abs=1e-3)
    # and eval-retrieval's re-ranker reads the run's score
    texts = {str(i): d for i, d in enumerate(docs)}
    score = _reranker(tmp_path / "run", texts)
    got = score(rows[0]["query"], ["0", "1"])
    want = [x["score"] for x in p.predict([f"{rows[0]['query']}\t{' '.join(docs[i].split())}" for i in (0, 1)])]
    assert got == pytest.approx(want, abs=1e-6)
