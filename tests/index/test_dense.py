"""DenseIndex: exact search equals brute force, ids/metadata survive add/delete/save/load for every kind, errors
name the id or file and the fix, and a save killed with SIGKILL leaves the previous index intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from encoderforge import EncoderforgeError
from encoderforge.index.dense import DenseIndex, resolve_kind
from encoderforge.index.embedder import check_compatible


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vecs() -> np.ndarray:
    return unit(np.random.default_rng(0).standard_normal((600, 24)).astype(np.float32))


IDS = [f"doc-{i}" for i in range(600)]


def test_flat_equals_brute_force(vecs):
    idx = DenseIndex.create(24, "flat")
    idx.add(IDS, vecs * 3.0, [{"n": i} for i in range(600)])  # the index normalises: cosine whatever the scale
    q = vecs[:7] + 0.1
    hits = idx.search(q, k=5)
    sims = unit(q) @ vecs.T
    for row, ids, scores in zip(sims, hits.ids, hits.scores):
        best = np.argsort(-row)[:5]
        assert ids == [IDS[i] for i in best]
        np.testing.assert_allclose(scores, row[best], atol=1e-5)
    assert idx.meta["doc-3"] == {"n": 3}


def test_auto_kind_by_size():
    assert resolve_kind("auto", 100_000) == "flat"
    assert resolve_kind("auto", 100_001) == "hnsw"
    assert resolve_kind("ivfpq", 10) == "ivfpq"
    with pytest.raises(EncoderforgeError, match="--kind must be"):
        resolve_kind("annoy", 10)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_delete_save_load_roundtrip(tmp_path, vecs, kind):
    idx = DenseIndex.create(24, kind, train=vecs if kind == "ivfpq" else None)
    idx.add(IDS, vecs, [{"n": i} for i in range(600)])
    gone = IDS[:50]
    idx.delete(gone)
    hits = idx.search(vecs[:50], k=10)
    assert all(len(r) == 10 and not set(r) & set(gone) for r in hits.ids)  # k live results despite tombstones
    idx.save(tmp_path / "ix")
    back = DenseIndex.load(tmp_path / "ix")
    assert len(back) == 550 and back.kind == kind and back.meta["doc-70"] == {"n": 70}
    again = back.search(vecs[:50], k=10)
    assert again.ids == hits.ids
    np.testing.assert_allclose(np.array(again.scores), np.array(hits.scores), atol=1e-5)
    if kind != "ivfpq":  # approximate kinds still find a stored vector itself first
        assert back.search(vecs[100:110], k=1).ids == [[i] for i in IDS[100:110]]


def test_hnsw_compacts_when_tombstones_outnumber_live(vecs):
    idx = DenseIndex.create(24, "hnsw")
    idx.add(IDS, vecs)
    idx.delete(IDS[:301])
    assert not idx.dead and idx.index.ntotal == 299  # rebuilt from the live vectors
    assert idx.search(vecs[400:401], k=1).ids == [["doc-400"]]
    idx.add(["new"], vecs[:1])  # ids keep growing after a rebuild
    assert idx.search(vecs[:1], k=1).ids == [["new"]]


def test_duplicate_and_unknown_ids_are_one_line_errors(vecs):
    idx = DenseIndex.create(24, "flat")
    idx.add(IDS[:3], vecs[:3])
    with pytest.raises(EncoderforgeError, match=r"'doc-1' is already in the index; delete it first") as e:
        idx.add(["x", "doc-1"], vecs[:2])
    assert "\n" not in str(e.value) and len(idx) == 3  # nothing added
    with pytest.raises(EncoderforgeError, match=r"'y' is not in the index .*nothing was deleted"):
        idx.delete(["doc-0", "y"])
    assert len(idx) == 3
    with pytest.raises(EncoderforgeError, match="shape .*24-d vectors"):
        idx.search(np.ones((1, 8), np.float32))
    with pytest.raises(EncoderforgeError, match="at least 256 vectors"):
        DenseIndex.create(24, "ivfpq", train=vecs[:100])


def test_load_verifies_every_file(tmp_path, vecs):
    d = tmp_path / "ix"
    idx = DenseIndex.create(24, "flat")
    idx.add(IDS, vecs)
    idx.save(d)
    data = (d / "index.faiss").read_bytes()
    (d / "index.faiss").write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(EncoderforgeError, match=r"index.faiss: checksum differs .*rebuild with `encoderforge index build`"):
        DenseIndex.load(d)
    (d / "index.faiss").write_bytes(data)
    (d / "ids.jsonl").unlink()
    with pytest.raises(EncoderforgeError, match=r"ids.jsonl: missing from the index; rebuild"):
        DenseIndex.load(d)
    (d / "manifest.json").unlink()
    with pytest.raises(EncoderforgeError, match=r"manifest.json: missing, so .* not a complete index; rebuild"):
        DenseIndex.load(d)


def test_query_from_another_model_is_refused(tiny_embedder):
    from dataclasses import replace

    spec = tiny_embedder.spec
    other = replace(spec, model="other-model", model_hash="f" * 64, pooling="cls")
    with pytest.raises(
        EncoderforgeError, match=r"built with .*bert-tiny.* but the query uses other-model .*pooling mean vs cls"
    ) as e:
        check_compatible(spec, other, "ix/manifest.json")
    assert "\n" not in str(e.value) and "rebuild" in str(e.value)
    check_compatible(spec, replace(spec, max_length=64), "ix")  # a shorter cut does not change the vector space


SAVER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from encoderforge.index import dense
    real = dense._write_ids
    def slow(path, idx):  # the real write, then stall inside the atomic save until the parent kills us
        real(path, idx)
        print("MID-SAVE", flush=True)
        time.sleep(60)
    dense._write_ids = slow
    idx = dense.DenseIndex.load(sys.argv[1])
    idx.add(["late"], np.ones((1, idx.dim), np.float32))
    idx.save(sys.argv[1])
    """
)


def test_sigkill_during_save_keeps_the_previous_index(tmp_path, vecs):
    d = tmp_path / "ix"
    idx = DenseIndex.create(24, "flat")
    idx.add(IDS, vecs)
    idx.save(d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen([sys.executable, "-c", SAVER, str(d)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "MID-SAVE"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # byte-identical: the half-written copy is aside
    back = DenseIndex.load(d)
    assert len(back) == 600 and "late" not in back.iid
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ix"]
    assert leftovers and all(n.startswith(".ix.tmp-") for n in leftovers)  # hidden, never loaded as an index
    assert json.loads((d / "manifest.json").read_text())["count"] == 600
