"""Fine-tuned runs served for real: /v1/classify, /v1/ner and /v1/rerank equal the Predictor's answers; several
workers share /metrics and survive kill -9 of one; schemathesis finds no 5xx and no off-schema answer."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from encoderforge.data.readers import Schema, from_records
from encoderforge.recipes.finetune import finetune
from encoderforge.recipes.finetune_config import finetune_config
from encoderforge.recipes.predict import Predictor

STEPS = {"finetune.epochs": 1, "train.batch_rows": 8, "finetune.max_length": 48, "train.progress": False}


def tuned(task: str, model: Path, out: Path, rows: list, schema: Schema, extra: dict | None = None) -> Path:
    """One short epoch of fine-tuning of bert-tiny: enough for a real head, not for quality."""
    values = {"model": str(model), "train.out_dir": str(out), **STEPS, **(extra or {})}
    cfg = finetune_config(task, values=values)
    finetune(cfg, train=from_records(rows, schema, name="train"), dev=from_records(rows[:8], schema, name="dev"))
    return out


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory, tiny_model: Path, bbc_rows) -> Path:
    rows = [(text, topic) for topic, text in bbc_rows[:48]]
    return tuned("classify", tiny_model, tmp_path_factory.mktemp("srv") / "cls", rows, Schema())


def test_classify_server_equals_the_predictor(start_server, classify_run: Path, bbc_rows) -> None:
    server = start_server(classify_run)
    texts = [text for _, text in bbc_rows[48:54]]
    r = httpx.post(f"{server.url}/v1/classify", json={"input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    want = Predictor.load(classify_run).predict(texts)
    got = r.json()["data"]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert all(abs(g["score"] - w["score"]) < 1e-5 for g, w in zip(got, want))
    health = httpx.get(f"{server.url}/health").json()
    assert health["task"] == "classify" and "/v1/classify" in health["endpoints"]
    assert httpx.post(f"{server.url}/v1/ner", json={"input": "a"}).status_code == 404


def test_ner_server_equals_the_predictor(start_server, tmp_path: Path, tiny_model: Path, wnut_rows) -> None:
    run = tuned("ner", tiny_model, tmp_path / "ner", wnut_rows[:40], Schema(label_type="tags"))
    server = start_server(run)
    texts = [" ".join(tokens) for tokens, _ in wnut_rows[40:44]]
    r = httpx.post(f"{server.url}/v1/ner", json={"input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    want = Predictor.load(run).predict(texts)
    assert [d["tags"] for d in r.json()["data"]] == [w["tags"] for w in want]
    blank = httpx.post(f"{server.url}/v1/ner", json={"input": ["   "]})
    assert blank.status_code == 400 and "blank" in blank.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["regress", "rerank"])
def test_rerank_server_orders_by_the_pair_head(kind, start_server, tmp_path: Path, tiny_model: Path, bbc_rows) -> None:
    texts = [text[:200] for _, text in bbc_rows[:40]]
    if kind == "regress":  # a pair regressor's value
        rows: list = [((texts[i], texts[(i + k) % 40]), float(k == 0)) for i in range(20) for k in (0, 7)]
        run = tuned(
            kind,
            tiny_model,
            tmp_path / "pairs",
            rows,
            Schema(text_fields=("a", "b"), label_type="float"),
            {"data.text_field": ["a", "b"]},
        )
    else:  # a listwise re-ranker's score
        rows = [((texts[i], texts[i]), [texts[(i + 7) % 40], texts[(i + 9) % 40]]) for i in range(20)]
        run = tuned(kind, tiny_model, tmp_path / "pairs", rows, Schema(label_type="pairs"))
    key = {"regress": "value", "rerank": "score"}[kind]
    server = start_server(run)
    docs = texts[20:26]
    r = httpx.post(f"{server.url}/v1/rerank", json={"query": texts[20], "documents": docs, "top_n": 3, "return_documents": True})
    assert r.status_code == 200, r.text
    want = [p[key] for p in Predictor.load(run).predict([f"{texts[20]}\t{d}" for d in docs])]
    res = r.json()["results"]
    assert [x["index"] for x in res] == sorted(range(6), key=lambda i: -want[i])[:3]
    assert all(abs(x["relevance_score"] - want[x["index"]]) < 1e-5 and x["document"] == docs[x["index"]] for x in res)
    blank = httpx.post(f"{server.url}/v1/rerank", json={"query": " ", "documents": docs})
    assert blank.status_code == 400 and "blank" in blank.json()["error"]["message"]  # refused before the model
    assert httpx.post(f"{server.url}/v1/rerank", json={"query": "q", "documents": ["d"]}).status_code == 200


def _children(pid: int) -> list[int]:
    """The uvicorn worker processes of a supervisor (spawned; not multiprocessing's resource tracker)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    workers = []
    for child in map(int, out.split()):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            pass
    return workers


def test_two_workers_share_metrics_and_survive_kill_9(start_server, classify_run: Path) -> None:
    server = start_server(classify_run, "--workers", "2")
    url = f"{server.url}/v1/embeddings"
    for _ in range(20):
        assert httpx.post(url, json={"input": "one request"}, timeout=60).status_code == 200
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('encoderforge_requests_total{endpoint="/v1/embeddings",status="200"}'):
            total += float(line.split()[-1])
    assert total == 20  # summed over both workers, whichever answered the scrape
    workers = _children(server.proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    ok = sum(httpx.post(url, json={"input": "after the kill"}, timeout=60).status_code == 200 for _ in range(10))
    assert ok == 10  # the surviving worker answers while the supervisor restarts the other
    deadline = time.time() + 60
    while time.time() < deadline and (len(_children(server.proc.pid)) < 2 or workers[0] in _children(server.proc.pid)):
        time.sleep(0.5)
    assert len(_children(server.proc.pid)) == 2 and workers[0] not in _children(server.proc.pid)  # restarted
    assert httpx.post(url, json={"input": "and after the restart"}, timeout=60).status_code == 200


def test_schemathesis_finds_no_5xx_and_no_off_schema_answer(start_server, classify_run: Path, tmp_path: Path) -> None:
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(st).exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    server = start_server(classify_run, "--max-items", "64")
    res = subprocess.run(
        [st, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error,response_schema_conformance",
         "--max-examples", "25", "--phases", "examples,coverage,fuzzing", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=500, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert httpx.get(f"{server.url}/ready").status_code == 200
