"""`encoderforge compress` end to end on a tiny fine-tuned run over real BBC texts: every step runs through the ONE
loop, writes a run directory that loads like a fine-tuned one, resumes after a removed/unfinished step, and the
report measures every model beside the anchors in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.compression.int8_static import static_engine_available
from encoderforge.compression.recipe import parse_recipe
from encoderforge.model import checkpoint
from encoderforge.recipes.compress import compress
from encoderforge.recipes.finetune import finetune
from encoderforge.recipes.finetune_config import finetune_config
from encoderforge.recipes.predict import Predictor

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_model, bbc_rows) -> Path:
    d = tmp_path_factory.mktemp("teacher")
    for name, part in (("train", bbc_rows[:80]), ("test", bbc_rows[80:])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for y, t in part))
    torch.set_num_threads(1)
    cfg = finetune_config(
        "classify",
        values={
            "model": str(tiny_model),
            "data.train": str(d / "train.jsonl"),
            "data.test": str(d / "test.jsonl"),
            "train.out_dir": str(d / "run"),
            "finetune.epochs": 2,
            "finetune.max_length": 64,
            "train.batch_rows": 16,
            "train.lr": 1e-3,
            "finetune.probe": False,
        },
    )
    finetune(cfg)
    return d / "run"


RECIPE = {
    "steps": [
        {"distill": {"keep_layers": [1], "epochs": 0.5, "kd_alpha": 0.5, "hidden_weight": 1.0}},
        {"structured": {"heads": 0.5, "ffn": 0.5, "batches": 2, "epochs": 0.5}},
        {"quantize": {"method": "int8"}},
    ],
    "bench": {"texts": 8, "rounds": 1, "threads": 1, "latency_texts": 2},
}


def test_compress_runs_every_step_and_reports_every_model(tmp_path: Path, teacher: Path) -> None:
    out = tmp_path / "small"
    res = compress(parse_recipe(RECIPE, where="recipe"), out, teacher=teacher)
    names = [Path(s["dir"]).name for s in res.steps]
    assert names == ["01-distill", "02-structured", "03-quantize"]
    dense = checkpoint.load(teacher / "model").encoder
    distilled = checkpoint.load(out / "01-distill" / "model").encoder
    pruned = checkpoint.load(out / "02-structured" / "model").encoder
    assert (dense.cfg.num_layers, distilled.cfg.num_layers) == (2, 1)
    n = lambda e: sum(p.numel() for p in e.parameters())  # noqa: E731
    assert n(pruned) < n(distilled) < n(dense)
    assert res.steps[0]["train"]["steps"] > 0 and "accuracy" in res.steps[1]["dev"]
    # the kept shape is saved before recovery training; a resumed step re-applies it (no re-scoring) to the same shapes
    from encoderforge.recipes.compress import apply_shape
    from encoderforge.recipes.compress_teacher import load_teacher

    t = load_teacher(teacher)
    net = t.net(out / "01-distill")
    apply_shape(net, json.loads((out / "02-structured" / "pruned.json").read_text()))
    shapes = {k: v.shape for k, v in net.encoder.state_dict().items()}
    assert shapes == {k: v.shape for k, v in pruned.state_dict().items()}
    # every step directory serves like a fine-tuned run
    assert Predictor.load(out / "02-structured").predict(["the match ended in a draw"])[0]["label"]
    rows = {r["model"]: r for r in res.report["rows"]}
    assert {"01-distill", "02-structured", "03-quantize (dynamic int8)"} <= set(rows)
    assert {"transformers fp32 (arrival order)", "onnxruntime fp32 (sorted)", "onnxruntime int8 (sorted)"} <= set(rows)
    for r in rows.values():
        assert r["texts_per_s"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0 and 0 <= r["accuracy"] <= 1
    assert rows["03-quantize (dynamic int8)"]["mb"] < rows["02-structured"]["mb"]  # int8 weights on disk
    assert rows["onnxruntime int8 (sorted)"]["mb"] < rows["onnxruntime fp32 (sorted)"]["mb"]
    # the anchors run the dense weights: transformers and ONNX Runtime fp32 predict what our engine predicts
    dense_row = rows["dense fine-tuned (encoderforge fp32)"]
    assert rows["transformers fp32 (arrival order)"]["accuracy"] == dense_row["accuracy"]
    assert rows["onnxruntime fp32 (sorted)"]["accuracy"] == dense_row["accuracy"]
    assert (out / "report" / "pareto.png").stat().st_size > 10_000
    assert "| 02-structured |" in (out / "report" / "table.md").read_text()

    # a finished run is not redone; a step whose metrics.json is gone (killed before it finished) is redone alone
    before = (out / "01-distill" / "metrics.json").stat().st_mtime_ns
    again = compress(parse_recipe(RECIPE, where="recipe"), out, teacher=teacher)
    assert again.report == res.report and (out / "01-distill" / "metrics.json").stat().st_mtime_ns == before
    (out / "03-quantize" / "metrics.json").unlink()
    compress(parse_recipe({**RECIPE, "bench": {**RECIPE["bench"], "anchors": False}}, where="recipe"), out, teacher=teacher)
    assert (out / "01-distill" / "metrics.json").stat().st_mtime_ns == before
    assert (out / "03-quantize" / "metrics.json").is_file()


def test_bad_teacher_and_changed_recipe_fail_clearly(tmp_path: Path, teacher: Path) -> None:
    recipe = parse_recipe({"steps": [{"quantize": {}}], "bench": {"anchors": False, "texts": 4, "rounds": 1}}, where="r")
    with pytest.raises(EncoderforgeError, match="task.json: missing; the teacher must be a finished"):
        compress(recipe, tmp_path / "x", teacher=tmp_path)
    with pytest.raises(EncoderforgeError, match="no teacher run"):
        compress(recipe, tmp_path / "x")
    (tmp_path / "not-ours").mkdir()
    (tmp_path / "not-ours" / "keep.txt").write_text("user data")
    with pytest.raises(EncoderforgeError, match="not an encoderforge run"):
        compress(recipe, tmp_path / "not-ours", teacher=teacher)
    assert (tmp_path / "not-ours" / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize(
    ("method", "runtime", "suffix"),
    [
        pytest.param(
            "static_int8",
            "engine",
            ".safetensors",
            marks=pytest.mark.skipif(not static_engine_available(), reason="no oneDNN int8"),
        ),
        ("static_int8", "onnx", ".onnx"),
        ("int4", "engine", ".safetensors"),
    ],
)
def test_quantize_steps_write_their_artefact_and_serve_through_the_report(
    tmp_path: Path, teacher: Path, method: str, runtime: str, suffix: str
) -> None:
    args = {"method": method, "runtime": runtime, "calibration": 16, "group_size": 32}
    recipe = parse_recipe(
        {"steps": [{"quantize": args}], "bench": {"texts": 8, "rounds": 1, "threads": 1, "latency_texts": 2, "anchors": False}},
        where="r",
    )
    res = compress(recipe, tmp_path / method, teacher=teacher)
    step = res.steps[0]
    artefact = tmp_path / method / "01-quantize" / step["artefact"]
    assert step["quantize"] == method and artefact.suffix == suffix and artefact.is_file() and step["cosine"] > 0.9
    assert not list((tmp_path / method / "01-quantize").glob("fp32-for-calibration*"))  # the temporary fp32 export is gone
    dense, quant = res.report["rows"]
    assert quant["mb"] < dense["mb"] and quant["texts_per_s"] > 0 and 0 <= quant["accuracy"] <= 1
    what = (
        {"engine": "static int8, our engine", "onnx": "static int8, ONNX Runtime"}[runtime]
        if method == "static_int8"
        else "int4 weights"
    )
    assert quant["model"] == f"01-quantize ({what})"  # several quantize steps read apart in the table and plot


def test_several_quantize_steps_each_quantize_the_same_model_in_one_report(tmp_path: Path, teacher: Path) -> None:
    """A recipe may end in several quantize steps (a dynamic vs static int8 comparison in one run): each starts from
    the same fp32 weights, and the int8 file is about 4x smaller than fp32 (int8 word embeddings included)."""
    recipe = parse_recipe(
        {
            "steps": [{"quantize": {"method": "int8"}}, {"quantize": {"method": "int4", "group_size": 32}}],
            "bench": {"texts": 8, "rounds": 1, "threads": 1, "latency_texts": 2, "anchors": False},
        },
        where="r",
    )
    res = compress(recipe, tmp_path / "q", teacher=teacher)
    assert [s["quantize"] for s in res.steps] == ["int8", "int4"]
    assert res.steps[0]["artefact"] == "model-int8.safetensors"
    fp32 = [(tmp_path / "q" / d / "model" / "model.safetensors").read_bytes() for d in ("01-quantize", "02-quantize")]
    assert fp32[0] == fp32[1]  # the second quantized the same fp32 model, not the first's int8 one
    dense, int8, int4 = res.report["rows"]
    assert int4["mb"] < int8["mb"] < dense["mb"] / 3
