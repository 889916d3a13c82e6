"""`--lr auto` (training/lr_find.py): the range test's rule on known curves, and in a real fine-tune: deterministic
for a seed, recorded with its curve in config.json, the model restored before training, reused on resume."""

from __future__ import annotations

import json
import math

import pytest

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, from_records
from encoderforge.recipes.finetune import finetune
from encoderforge.recipes.finetune_config import default_lr, finetune_config
from encoderforge.training.lr_find import choose, range_steps, smooth
from encoderforge.training.schedules import lr_at


def test_range_schedule_ramps_exponentially_from_min_ratio_to_peak() -> None:
    lrs = [lr_at(s, peak=1e-2, total=5, schedule="range", min_ratio=1e-4) for s in range(5)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e-2)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([10.0] * 4)


def test_rule_picks_a_tenth_of_the_minimum_and_cuts_at_divergence() -> None:
    lrs = [10 ** (-6 + i / 4) for i in range(17)]  # 1e-6 .. 1e-2
    losses = [2.0] * 6 + [1.8, 1.4, 1.0, 0.7, 0.5, 0.45, 0.6, 1.5, 6.0, 40.0, float("nan")]
    lr, curve = choose(lrs, losses)
    sm = smooth(losses[: len(curve)])
    best = min(range(len(curve)), key=lambda i: sm[i])
    assert lr == pytest.approx(lrs[best] / 10) and best == 12  # the EMA lags the raw minimum (index 11) by a step
    assert len(curve) == 15  # cut where the smoothed loss passed 4x its minimum, before the 40 and the NaN
    assert all(math.isfinite(p[2]) for p in curve)
    with pytest.raises(EncoderforgeError, match="not finite"):
        choose(lrs[:3], [float("nan")] * 3)


def test_no_clear_minimum_keeps_the_configured_lr() -> None:
    lrs = [10 ** (-6 + i / 4) for i in range(17)]
    # lowest at the start of the ramp (a probe head that already fits), then up: no minimum to take a tenth of
    assert choose(lrs, [0.5 + 0.01 * i for i in range(8)] + [3.0] * 9)[0] is None
    # flat within noise until it diverges: under 5% below the first point
    assert (
        choose(lrs, [1.0, 0.99, 1.01, 0.98, 1.0, 0.99, 0.985, 1.0, 1.02, 5.0, 9.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])[0] is None
    )


def test_range_steps_scale_with_the_epoch_within_bounds() -> None:
    assert (range_steps(10), range_steps(120), range_steps(10_000)) == (30, 60, 100)


def test_default_peak_lr_per_task_kind_and_auto_falls_back_to_it(tmp_path) -> None:
    # measured defaults (docs/results.md, issue 15): 1e-4 for sequence labels, 2e-4 for token tags, 5e-5 elsewhere
    assert {t: finetune_config(t).train.lr for t in ("classify", "multilabel", "ner", "regress", "qa", "embed")} == {
        "classify": 1e-4,
        "multilabel": 1e-4,
        "ner": 2e-4,
        "regress": 5e-5,
        "qa": 5e-5,
        "embed": 5e-5,
    }
    assert all(default_lr(t) == finetune_config(t).train.lr for t in ("classify", "ner", "qa"))
    # `lr: auto` in a YAML keeps the task's default as the LR the range test falls back to
    (tmp_path / "r.yaml").write_text("task: ner\ntrain: {lr: auto}\n")
    cfg = finetune_config("ner", tmp_path / "r.yaml")
    assert cfg.finetune.lr_auto and cfg.train.lr == 2e-4
    # a file's own number wins over the default
    (tmp_path / "s.yaml").write_text("task: classify\ntrain: {lr: 3.0e-5}\n")
    assert finetune_config("classify", tmp_path / "s.yaml").train.lr == 3e-5


def test_lr_auto_spellings_resolve_to_the_flag() -> None:
    assert finetune_config("classify", overrides=["train.lr=auto"]).finetune.lr_auto
    assert finetune_config("classify", values={"train.lr": "auto"}).finetune.lr_auto
    cfg = finetune_config("classify", values={"train.lr": 1e-4})
    assert not cfg.finetune.lr_auto and cfg.train.lr == 1e-4
    # a number given after `auto` wins (the --set over the flag)
    cfg = finetune_config("classify", overrides=["train.lr=3e-4"], values={"train.lr": "auto"})
    assert not cfg.finetune.lr_auto and cfg.train.lr == 3e-4


@pytest.mark.slow
def test_lr_auto_is_deterministic_recorded_and_reused(tiny_model, bbc_rows, tmp_path) -> None:
    recs = [(text[:200], topic) for topic, text in bbc_rows]
    train, dev = from_records(recs[:80], Schema(), name="train"), from_records(recs[80:], Schema(), name="dev")

    def run(name: str, lr: object = "auto"):
        cfg = finetune_config(
            "classify",
            values={
                "model": str(tiny_model),
                "train.out_dir": str(tmp_path / name),
                "train.lr": lr,
                "train.batch_rows": 8,
                "finetune.epochs": 1,
                "finetune.max_length": 48,
                "train.progress": False,
            },
        )
        return finetune(cfg, train=train, dev=dev)

    a, b = run("a"), run("b")
    ca = json.loads((a.run_dir / "config.json").read_text())
    cb = json.loads((b.run_dir / "config.json").read_text())
    assert ca["lr_auto"]["lr"] == cb["lr_auto"]["lr"] == ca["lr"] == a.metrics["lr"]  # same seed, same choice
    assert ca["lr_auto"]["curve"] == cb["lr_auto"]["curve"] and len(ca["lr_auto"]["curve"]) >= 5
    # the range test left no trace: a run given the chosen LR as a number trains the very same curve
    c = run("c", ca["lr"])
    losses = [[json.loads(x).get("loss") for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()] for r in (a, c)]
    assert losses[0] == losses[1] and a.metrics["dev"] == c.metrics["dev"]
    curve = ca["lr_auto"]["curve"]
    best = min(curve, key=lambda p: p[2])
    if ca["lr_auto"]["rule"].startswith("lr at the minimum"):
        assert ca["lr"] == pytest.approx(best[0] / 10)
    else:  # no clear minimum: the configured LR, and the file says why
        assert ca["lr"] == default_lr("classify") and "kept train.lr" in ca["lr_auto"]["rule"]
    assert not (a.run_dir / "lr-find").exists()  # the scratch loop directory is gone
    # the choice is read back, never re-measured, when the file is there (a resumed run)
    saved = json.loads((a.run_dir / "lr_find.json").read_text())
    saved["lr"] = 1.234e-5
    (b.run_dir / "lr_find.json").write_text(json.dumps(saved))
    from encoderforge.training.lr_find import find_lr

    assert find_lr(None, None, None, None, run_dir=b.run_dir, steps=1, groups=list).lr == 1.234e-5  # type: ignore[arg-type]
