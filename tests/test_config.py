"""One config system: every shipped config loads; `finetune --config FILE --set key=value` resolves as
defaults < file < flags < --set; unknown keys, wrong types and non-finite numbers are one-line errors naming the
key and the file; the generated CLI flags are unique and carry the dataclass docs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from encoderforge import EncoderforgeError
from encoderforge.cli.app import app
from encoderforge.cli.finetune import ALIASES, SKIP
from encoderforge.cli.options import config_flags
from encoderforge.recipes.finetune_config import FinetuneConfig, finetune_config
from encoderforge.recipes.pretrain import PretrainConfig, load_config

CONFIGS = Path(__file__).parents[1] / "configs"
runner = CliRunner()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    if path.name.startswith("finetune-"):
        cfg = finetune_config(path.stem.split("-", 1)[1], path)
        assert isinstance(cfg, FinetuneConfig) and cfg.task == path.stem.split("-", 1)[1]
    elif path.name.startswith("compress-"):
        from encoderforge.compression.recipe import load_recipe

        assert load_recipe(path).steps
    else:
        assert isinstance(load_config(path), PretrainConfig)


def test_finetune_config_file_flags_and_set_in_that_order(tmp_path):
    r = runner.invoke(
        app,
        [
            "finetune",
            "classify",
            "--config",
            str(CONFIGS / "finetune-classify.yaml"),
            "--set",
            "train.lr=1e-4",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--print-config",
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)
    assert cfg["train"]["lr"] == 1e-4 and cfg["finetune"]["epochs"] == 2 and cfg["train"]["batch_rows"] == 8
    assert cfg["finetune"]["pooling"] == "mean" and cfg["train"]["beta2"] == 0.999  # BERT fine-tuning AdamW
    own = tmp_path / "my.yaml"
    own.write_text("finetune: {epochs: 5}\ntrain: {lr: 3.0e-5}\n")
    cfg = finetune_config("classify", own, ["train.lr=7e-5"], values={"finetune.epochs": 1.0})
    assert cfg.finetune.epochs == 1.0 and cfg.train.lr == 7e-5  # flags over the file, --set over both
    assert finetune_config("qa").finetune.max_length == 256  # the task's default


@pytest.mark.parametrize(
    "text, overrides, match",
    [
        ("train: {lrr: 1}\n", [], r"my.yaml.train: unknown field\(s\) \['lrr'\]"),
        ("finetune: {epochs: many}\n", [], r"finetune.epochs: expected float, got 'many'"),
        ("finetune: {epochs: .nan}\n", [], r"finetune.epochs: must be a finite number"),
        ("finetune: {pooling: max}\n", [], r"finetune.pooling='max'; use 'mean', 'cls' or 'pooler'"),
        ("train: {steps: 10}\n", [], r"train.steps is derived in fine-tuning; set finetune.epochs instead"),
        ("task: ner\n", [], r"task is 'ner' but the command is `finetune classify`"),
        ("", ["finetune.epochs=-1"], r"--epochs must be positive"),
        ("", ["train.batch_rows=0"], r"train.batch_rows must be positive"),
        ("- a\n- b\n", [], r"my.yaml: expected a mapping"),
    ],
)
def test_bad_configs_are_one_line_errors_naming_the_key(tmp_path, text, overrides, match):
    own = tmp_path / "my.yaml"
    own.write_text(text)
    with pytest.raises(EncoderforgeError, match=match):
        finetune_config("classify", own, overrides)


def test_bad_config_from_the_cli_exits_1_without_traceback(tmp_path):
    own = tmp_path / "my.yaml"
    own.write_text("train: {lrr: 1}\n")
    r = runner.invoke(app, ["finetune", "classify", "--config", str(own), "--train", "x.csv", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "unknown field(s) ['lrr']" in r.output and "Traceback" not in r.output


def test_generated_flags_are_unique_and_documented():
    flags = config_flags(FinetuneConfig, skip=SKIP, aliases=ALIASES)
    keys = {f.key for f in flags}
    assert {"train.batch_rows", "finetune.epochs", "data.train", "model"} <= keys
    assert not keys & {"train.steps", "train.warmup_steps", "task", "train.lr"}  # --lr is its own flag: a number or auto
    assert all(f.help for f in flags), [f.key for f in flags if not f.help]
    r = runner.invoke(app, ["finetune", "ner", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--batch-size" in r.output and "train.batch_rows" in r.output
    assert "--lr" in r.output and "auto" in r.output and "train.lr" in r.output


def test_list_flags_take_commas_and_repeats():
    r = runner.invoke(
        app,
        [
            "finetune",
            "classify",
            "--labels",
            "negative,neutral",
            "--labels",
            "positive",
            "--text-field",
            "a",
            "--text-field",
            "b",
            "--print-config",
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)
    assert cfg["data"]["labels"] == ["negative", "neutral", "positive"] and cfg["data"]["text_field"] == ["a", "b"]
