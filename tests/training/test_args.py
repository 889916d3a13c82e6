"""Configs: every shipped YAML loads, --set overrides apply with types, unknown fields are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from encoderforge import EncoderforgeError
from encoderforge.recipes.pretrain import PretrainConfig, load_config
from encoderforge.training.args import TrainArgs

CONFIGS = sorted(
    p for p in (Path(__file__).parents[2] / "configs").glob("*.yaml") if not p.name.startswith(("finetune-", "compress-"))
)  # finetune and compression recipes: tests/test_config.py


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {
        "pretrain-tiny.yaml",
        "pretrain-small.yaml",
        "pretrain-base.yaml",
        "continue-minilm.yaml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(path):
    from encoderforge.model.config import preset

    cfg = load_config(path)
    assert isinstance(cfg, PretrainConfig) and cfg.train.steps > 0
    if cfg.model.init_from:  # continued pretraining: the checkpoint fixes the architecture
        from encoderforge.model.checkpoint import load

        enc = load(cfg.model.init_from).encoder.cfg
    else:
        enc = preset(cfg.model.preset, vocab_size=30522, **cfg.model.overrides)  # the architecture is valid
    assert cfg.data.max_len <= enc.max_position
    assert cfg.train.batch_rows % max(1, cfg.train.micro_rows or 1) == 0


def test_overrides_are_typed(tmp_path):
    cfg = load_config(
        CONFIGS[0],
        ["train.lr=5e-4", "train.steps=7", "masking.strategy=span", "model.overrides={norm: pre}", "train.resume=false"],
    )
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float) and cfg.train.steps == 7
    assert cfg.masking.strategy == "span" and cfg.model.overrides == {"norm": "pre"} and cfg.train.resume is False


def test_unknown_fields_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(EncoderforgeError, match=r"bad.yaml.train: unknown field\(s\) \['stepz'\]"):
        load_config(bad)
    with pytest.raises(EncoderforgeError, match=r"unknown field\(s\) \['optimizer'\]"):
        load_config(None, ["optimizer.lr=1"])
    with pytest.raises(EncoderforgeError, match=r"config.masking: unknown field\(s\) \['rate'\]"):
        load_config(None, ["masking.rate=0.3"])
    with pytest.raises(EncoderforgeError, match=r"config.train.steps: expected int, got 'many'"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(EncoderforgeError, match="train.batch_rows must be positive"):
        load_config(None, ["train.batch_rows=0"])
    with pytest.raises(EncoderforgeError, match="expected key=value"):
        load_config(None, ["train.lr"])


def test_defaults_are_valid():
    assert TrainArgs().schedule == "linear"
