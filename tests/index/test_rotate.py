"""`encoderforge index rotate`: the rotation is orthogonal and spans the corpus's top principal subspace (checked
against numpy's SVD), the rotated run leaves full-width scores unchanged and keeps more in its cut, every loader
applies it, and an index built with it refuses the source model's queries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from encoderforge import EncoderforgeError
from encoderforge.cli.app import app
from encoderforge.index.embedder import check_compatible, load_embedder
from encoderforge.index.rotation import fit_rotation

runner = CliRunner()


def test_the_rotation_is_orthogonal_and_spans_the_top_singular_directions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)) * np.linspace(3, 0.1, 16) @ np.linalg.qr(rng.normal(size=(16, 16)))[0]
    r, share = fit_rotation(x)
    assert np.allclose(r.T @ r, np.eye(16), atol=1e-5)
    assert np.all(np.diff(share) <= 1e-12) and share.sum() == pytest.approx(1.0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)  # the reference: right singular vectors of X, uncentred
    for k in (1, 4, 8):
        ours, ref = r[:, :k] @ r[:, :k].T, vt[:k].T @ vt[:k]  # projections onto the two k-dim subspaces
        assert np.allclose(ours, ref, atol=1e-4), k
        assert share[:k].sum() == pytest.approx(float(np.sum(s[:k] ** 2) / np.sum(s**2)), rel=1e-6)
    kept = np.sum((x @ r)[:, :4] ** 2)
    assert kept > np.sum(x[:, :4] ** 2) and kept == pytest.approx(np.sum(s[:4] ** 2), rel=1e-4)


def test_a_rotation_needs_two_vectors():
    with pytest.raises(EncoderforgeError, match="at least 2 vectors"):
        fit_rotation(np.ones((1, 8)))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory, tiny_model, bbc_docs):
    d = tmp_path_factory.mktemp("rot")
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bbc_docs[:40]), encoding="utf-8")
    r = runner.invoke(app, ["index", "rotate", str(tiny_model), str(d / "corpus.jsonl"), "--out", str(d / "rot"), "--dims", "32"])
    assert r.exit_code == 0, r.output
    assert "rotated 128-dim vectors on 40 documents" in r.stdout and "cut to 32 dims by default" in r.stdout
    return d


def test_full_width_scores_are_unchanged_and_the_cut_keeps_more(rotated, tiny_model, bbc_docs):
    texts = [r["text"] for r in bbc_docs[:40]]
    src = load_embedder(tiny_model).embed(texts)
    full = load_embedder(rotated / "rot", dims=128).embed(texts)
    assert np.allclose(full @ full.T, src @ src.T, atol=1e-5)  # an orthogonal rotation: every cosine as before
    assert not np.allclose(full, src, atol=1e-3)
    cut = load_embedder(rotated / "rot")  # task.json's default cut
    assert cut.spec.dim == 32 and cut.spec.dims == 32
    assert np.allclose(cut.embed(texts), full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True), atol=1e-6)
    assert np.sum(full[:, :32] ** 2) > np.sum(src[:, :32] ** 2)  # the rotated cut keeps more of the corpus's vectors
    info = json.loads((rotated / "rot" / "rotation.json").read_text())
    assert info["documents"] == 40 and info["precision"] == "fp32"
    assert info["sampled"] == 40 and info["energy_kept"]["rotated"]["32"] > info["energy_kept"]["unrotated"]["32"]


def test_an_index_of_the_rotated_run_refuses_the_source_models_queries(rotated, tiny_model):
    rot, src = load_embedder(rotated / "rot", dims=32), load_embedder(tiny_model, dims=32)
    assert rot.spec.dim == src.spec.dim and rot.spec.model_hash != src.spec.model_hash
    with pytest.raises(EncoderforgeError, match=r"model_hash [0-9a-f]{12}:rotation=[0-9a-f]{16} vs [0-9a-f]{12} "):
        check_compatible(rot.spec, src.spec, "manifest.json")  # the message shows what differs: the rotation


def test_index_build_add_eval_retrieval_and_predict_apply_the_rotation_once(rotated, tmp_path, bbc_docs, write_jsonl):
    from encoderforge.index.dense import DenseIndex
    from encoderforge.recipes.predict import Predictor

    rot, corpus = load_embedder(rotated / "rot"), rotated / "corpus.jsonl"
    r = runner.invoke(app, ["index", "build", str(corpus), str(tmp_path / "ix"), "--model", str(rotated / "rot")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["embed"]["dim"] == 32 and ":rotation=" in manifest["embed"]["model_hash"]
    new = write_jsonl(tmp_path / "new.jsonl", [{"id": "new-0", "text": bbc_docs[50]["text"]}])
    assert runner.invoke(app, ["index", "add", str(tmp_path / "ix"), str(new)]).exit_code == 0
    ix = DenseIndex.load(tmp_path / "ix")
    want = rot.embed([bbc_docs[3]["text"], bbc_docs[50]["text"]])
    assert np.allclose(ix.reconstruct(["bbc-003", "new-0"]), want, atol=1e-5)  # stored = rotated once, then cut
    preds = Predictor.load(rotated / "rot").predict([bbc_docs[3]["text"]])  # `encoderforge predict` on the run
    assert np.allclose(np.array(preds[0]["embedding"]), want[0], atol=1e-5)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\tbbc-003\t1\n", encoding="utf-8")
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "text": bbc_docs[3]["text"]}])
    out = tmp_path / "ev"
    argv = [
        "eval-retrieval",
        "--queries",
        queries,
        "--qrels",
        qrels,
        "--corpus",
        corpus,
        "--model",
        rotated / "rot",
        "--out",
        out,
    ]
    assert runner.invoke(app, [str(a) for a in argv]).exit_code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["dims"] == 32 and m["rotated"] is True and m["test"]["ndcg@10"] == 1.0


@pytest.mark.parametrize(
    "case, argv, needle",
    [
        ("out-exists", ["{model}", "{corpus}", "--out", "{dir}"], "already exists; encoderforge never overwrites it"),
        (
            "dims-too-big",
            ["{model}", "{corpus}", "--out", "{dir}/x", "--dims", "999"],
            "dims=999 must be in 1..128 (the model's hidden size); lower --dims",
        ),
        ("already-rotated", ["{dir}/rot", "{corpus}", "--out", "{dir}/x"], "already rotated; rotate its source model"),
        ("sample", ["{model}", "{corpus}", "--out", "{dir}/x", "--sample", "1"], "--sample must be >= 2"),
        ("no-dims", ["{model}", "{corpus}", "--out", "{dir}/x"], "--dims is needed: the rotation changes nothing at full"),
        (
            "one-doc",
            ["{model}", "{dir}/one.jsonl", "--out", "{dir}/x", "--dims", "8"],
            "one.jsonl: a rotation is fitted on at least 2",
        ),
        ("out-in-model", ["{model}", "{corpus}", "--out", "{model}/x", "--dims", "8"], "lies inside the input directory"),
    ],
    ids=lambda c: c if isinstance(c, str) else None,
)
def test_bad_inputs_are_one_line_errors(case, argv, needle, rotated, tiny_model):
    (rotated / "one.jsonl").write_text('{"id": "a", "text": "just one"}\n', encoding="utf-8")
    before, model_files = sorted(p.name for p in rotated.iterdir()), sorted(p.name for p in tiny_model.iterdir())
    paths = {"model": tiny_model, "corpus": rotated / "corpus.jsonl", "dir": rotated}
    r = runner.invoke(app, ["index", "rotate", *[a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]])
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output
    assert sorted(p.name for p in rotated.iterdir()) == before  # nothing written, nothing removed
    assert sorted(p.name for p in tiny_model.iterdir()) == model_files


def test_a_corrupt_rotation_file_is_a_one_line_error(rotated, tmp_path):
    import shutil

    shutil.copytree(rotated / "rot", tmp_path / "rot")
    (tmp_path / "rot" / "rotation.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(EncoderforgeError, match="not a rotation file.*index rotate"):
        load_embedder(tmp_path / "rot")


def test_embed_and_export_onnx_on_the_run_give_the_runs_vectors(rotated, tmp_path, bbc_docs):
    """`encoderforge embed` and `export onnx` take the run itself (before: "config.json: missing"), and pointed at
    the run's model/ directory `embed` says that those are not the run's vectors."""
    from encoderforge.inference.onnx_export import encode_padded, onnx_session, run_onnx
    from encoderforge.tokenization import load_tokenizer

    texts = [r["text"][:300] for r in bbc_docs[:6]]
    src = tmp_path / "texts.txt"
    src.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    texts = src.read_text(encoding="utf-8").splitlines()
    run = load_embedder(rotated / "rot")
    want = run.embed(texts)
    r = runner.invoke(app, ["embed", str(src), "--model", str(rotated / "rot"), "--out", str(tmp_path / "run.npy")])
    assert r.exit_code == 0, r.output
    assert "wrote 6 vectors of dim 32" in r.stdout and "note:" not in r.stderr
    assert np.allclose(np.load(tmp_path / "run.npy"), want, atol=1e-5)

    argv = ["embed", str(src), "--model", str(rotated / "rot" / "model"), "--out", str(tmp_path / "m.npy"), "--max-length", "128"]
    r = runner.invoke(app, argv)
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "m.npy").shape == (6, 128)  # the encoder's own vectors, as asked
    note = r.stderr.strip()
    assert note.startswith("note: ") and "differ from these (rotated, cut to 32 dims)" in note
    assert note.endswith(f"for the run's vectors, pass --model {rotated / 'rot'}")

    out = tmp_path / "run.onnx"
    r = runner.invoke(app, ["export", "onnx", "--model", str(rotated / "rot"), "--out", str(out), "--pooling", "mean"])
    assert r.exit_code == 0, r.output  # the run's own pooling may be named
    assert "the run's vectors: mean pooling, rotated, first 32 dims, normalised" in r.stdout
    ids, mask = encode_padded(load_tokenizer(rotated / "rot" / "model"), texts, max_length=run.spec.max_length)
    got = run_onnx(onnx_session(out), ids, mask)
    assert got.shape == (6, 32) and np.allclose(got, want, atol=1e-4)


def test_export_onnx_of_a_run_refuses_another_pooling(rotated, tmp_path):
    out = tmp_path / "x.onnx"
    r = runner.invoke(app, ["export", "onnx", "--model", str(rotated / "rot"), "--out", str(out), "--pooling", "none"])
    assert r.exit_code != 0 and not out.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--pooling none" in lines[0] and "export its model/ directory" in lines[0], r.output


def test_a_sample_of_the_corpus_is_streamed_and_fitted_on_the_seeded_documents(rotated, tiny_model, bbc_docs):
    from encoderforge.index.rotation import load_rotation
    from encoderforge.recipes.index_rotate import index_rotate

    r = index_rotate(tiny_model, rotated / "corpus.jsonl", rotated / "s10", dims=16, sample=10, seed=3)
    assert r.sampled == 10
    info = json.loads((rotated / "s10" / "rotation.json").read_text())
    assert info["documents"] == 40 and info["sampled"] == 10 and info["seed"] == 3
    pick = np.sort(np.random.default_rng(3).choice(40, size=10, replace=False))
    want, _ = fit_rotation(load_embedder(tiny_model).embed([bbc_docs[i]["text"] for i in pick]))
    got = load_rotation(rotated / "s10" / "rotation.safetensors", 128)
    assert np.allclose(got[:, :8] @ got[:, :8].T, want[:, :8] @ want[:, :8].T, atol=1e-4)  # the same top subspace


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory, tiny_model):
    """An embed run with a Matryoshka cut and no rotation, [CLS] pooling, unnormalised vectors, 64 tokens."""
    import shutil

    run = tmp_path_factory.mktemp("cut") / "run"
    shutil.copytree(tiny_model, run / "model")
    task = {"kind": "embed", "pooling": "cls", "normalize": False, "max_length": 64, "dims": 16}
    (run / "task.json").write_text(json.dumps(task), encoding="utf-8")
    return run


def test_a_cut_run_without_a_rotation_embeds_and_exports_its_own_vectors(cut_run, tmp_path, bbc_docs):
    import onnx

    from encoderforge.inference.onnx_export import encode_padded, onnx_session, run_onnx
    from encoderforge.tokenization import load_tokenizer

    src = tmp_path / "texts.txt"
    src.write_text("".join(r["text"][:200].replace("\n", " ") + "\n" for r in bbc_docs[:5]), encoding="utf-8")
    texts = src.read_text(encoding="utf-8").splitlines()
    want = load_embedder(cut_run).embed(texts)
    assert want.shape == (5, 16) and not np.allclose(np.linalg.norm(want, axis=1), 1.0)  # cut, not normalised
    r = runner.invoke(app, ["embed", str(src), "--model", str(cut_run), "--out", str(tmp_path / "v.npy")])
    assert r.exit_code == 0, r.output
    assert np.allclose(np.load(tmp_path / "v.npy"), want, atol=1e-5)
    r = runner.invoke(app, ["export", "onnx", "--model", str(cut_run), "--out", str(tmp_path / "v.onnx")])
    assert r.exit_code == 0, r.output
    assert "cls pooling, first 16 dims; inputs of at most 64 tokens" in r.stdout
    ids, mask = encode_padded(load_tokenizer(cut_run / "model"), texts, max_length=64)
    assert np.allclose(run_onnx(onnx_session(tmp_path / "v.onnx"), ids, mask), want, atol=1e-4)
    r = runner.invoke(app, ["export", "onnx", "--model", str(cut_run), "--out", str(tmp_path / "q.onnx"), "--int8"])
    assert r.exit_code == 0, r.output
    for f in ("v.onnx", "q.onnx"):  # what a consumer needs travels with the file, int8 too
        props = {p.key: p.value for p in onnx.load(str(tmp_path / f), load_external_data=False).metadata_props}
        assert props["max_length"] == "64" and props["dims"] == "16" and props["pooling"] == "cls", f
        assert props["normalize"] == "false" and props["rotated"] == "false" and props["encoderforge.run"] == str(cut_run)
    argv = ["embed", str(src), "--model", str(cut_run / "model"), "--out", str(tmp_path / "m.npy"), "--max-length", "64"]
    r = runner.invoke(app, argv)  # the encoder alone, mean pooling: the note names every difference
    assert r.exit_code == 0 and "(cut to 16 dims, pooling cls, normalize False)" in r.stderr, r.output


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--pooling", "mean"], "--pooling mean: {run} is an embed run whose vectors use pooling cls; omit the flag"),
        (["--normalize"], "--normalize: {run} is an embed run whose vectors use normalize False"),
        (["--max-length", "32"], "--max-length 32: {run} is an embed run whose vectors use max_length 64"),
    ],
)
def test_embed_refuses_a_flag_that_contradicts_the_run(flags, needle, cut_run, tmp_path):
    (tmp_path / "t.txt").write_text("one text\n", encoding="utf-8")
    r = runner.invoke(app, ["embed", str(tmp_path / "t.txt"), "--model", str(cut_run), "--out", str(tmp_path / "v.npy"), *flags])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and needle.format(run=cut_run) in lines[0], r.output
    assert not (tmp_path / "v.npy").exists()
    r = runner.invoke(
        app, ["embed", str(tmp_path / "t.txt"), "--model", str(cut_run), "--out", str(tmp_path / "v.npy"), "--pooling", "cls"]
    )
    assert r.exit_code == 0, r.output  # the run's own value may be named


def test_a_damaged_task_json_is_a_one_line_error_for_the_run_and_no_error_for_its_encoder(tmp_path, tiny_model):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_model, run / "model")
    (run / "task.json").write_text('{"kind": "emb', encoding="utf-8")  # cut short by a crash
    (tmp_path / "t.txt").write_text("one text\n", encoding="utf-8")
    r = runner.invoke(app, ["embed", str(tmp_path / "t.txt"), "--model", str(run), "--out", str(tmp_path / "a.npy")])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "task.json: not valid JSON" in lines[0], r.output
    argv = [
        "embed",
        str(tmp_path / "t.txt"),
        "--model",
        str(run / "model"),
        "--out",
        str(tmp_path / "b.npy"),
        "--max-length",
        "128",
    ]
    r = runner.invoke(app, argv)
    assert r.exit_code == 0 and np.load(tmp_path / "b.npy").shape == (1, 128), r.output
