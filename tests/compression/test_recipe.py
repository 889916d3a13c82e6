"""The compression recipe: every step validated up front, every error one line naming the step and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from encoderforge import EncoderforgeError
from encoderforge.compression.recipe import Distill, Quantize, Structured, Unstructured, load_recipe, parse_recipe, step_name

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("compress-*.yaml")))
def test_shipped_recipes_parse(name: str) -> None:
    r = load_recipe(CONFIGS / name)
    assert r.steps and r.bench.threads == 2


def test_steps_keep_their_order_and_fields() -> None:
    r = parse_recipe(
        {
            "teacher": "runs/r8",
            "steps": [
                {"distill": {"keep_layers": [0, 2, 4], "epochs": 1}},
                {"structured": {"heads": 0.25, "ffn": 0.5}},
                {"unstructured": {"sparsity": 0.5, "method": "obert", "block": 4}},
                {"quantize": {"method": "static_int8"}},
            ],
        },
        where="r.yaml",
    )
    assert [type(s) for s in r.steps] == [Distill, Structured, Unstructured, Quantize]
    assert r.steps[0].keep_layers == [0, 2, 4] and r.steps[1].ffn == 0.5 and r.steps[2].block == 4
    assert [step_name(i, s) for i, s in enumerate(r.steps)] == ["01-distill", "02-structured", "03-unstructured", "04-quantize"]
    assert r.teacher == "runs/r8"


@pytest.mark.parametrize(
    "steps, message",
    [
        ([{"prune": {}}], "steps[0]: unknown method 'prune'"),
        ([{"unstructured": {"sparsity": 1.0}}], "steps[0].unstructured.sparsity must be in [0, 1), got 1.0"),
        ([{"unstructured": {"sparsity": -0.1}}], "sparsity must be in [0, 1)"),
        ([{"structured": {"heads": 1.2}}], "steps[0].structured.heads is a fraction to remove and must be in [0, 1)"),
        ([{"structured": {}}], "nothing to remove"),
        ([{"structured": {"heads": 0.5, "typo": 1}}], "unknown field(s) ['typo']"),
        ([{"unstructured": {"block": 3}}], "block must be 1 or 4"),
        ([{"quantize": {"method": "int2"}}], "steps[0].quantize.method='int2'"),
        ([{"quantize": {"method": "static_int8", "runtime": "tflite"}}], "steps[0].quantize.runtime='tflite'"),
        ([{"quantize": {"method": "int8", "runtime": "onnx"}}], "runtime='onnx' applies to method static_int8 only"),
        ([{"quantize": {}}, {"structured": {"heads": 0.5}}], "quantize must come after every training step"),
        ([{"quantize": {}}, {"quantize": {"method": "int4"}}, {"distill": {}}], "steps[0] quantize must come after"),
        ([{"unstructured": {}}, {"distill": {}}], "would refill its zeros"),
        ([{"distill": {"student": "minilm-l3", "keep_layers": [0]}}], "keep_layers applies to student=layers only"),
        ([{"distill": {"kd_alpha": 1.0}}], "trains without the teacher"),
        ([{"structured": {"heads": 0.5}, "quantize": {}}], "exactly one method"),
        ([], "'steps' must be a non-empty list"),
        ([{"structured": {"latency_ms": 5, "heads": 0.5}}], "latency_ms chooses how much to remove by itself"),
        ([{"unstructured": {"epochs": 0}}], "unstructured pruning happens during recovery training"),
    ],
)
def test_bad_recipes_fail_naming_the_step_and_field(steps: list, message: str) -> None:
    with pytest.raises(EncoderforgeError) as e:
        parse_recipe({"steps": steps}, where="r.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("r.yaml")


def test_unknown_top_level_field_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EncoderforgeError, match="unknown field"):
        parse_recipe({"steps": [{"quantize": {}}], "epochs": 3}, where="r.yaml")
    with pytest.raises(EncoderforgeError, match="missing.yaml"):
        load_recipe(tmp_path / "missing.yaml")
