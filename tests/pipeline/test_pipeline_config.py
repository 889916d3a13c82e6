"""Bad pipeline files fail with one line naming the file, the key and the fix, before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from encoderforge import EncoderforgeError
from encoderforge.cli.app import app
from encoderforge.pipeline.config import load_pipeline
from encoderforge.pipeline.quickstart import EXAMPLE, SMOKE, quickstart_config

GOOD_FT = "finetune: {task: multilabel, model: minilm-l6}\n"

BAD = {
    "unknown stage": ("data: {}\n" + GOOD_FT + "distill: {}\n", "unknown stage 'distill'"),
    "unknown key": ("data: {}\n" + GOOD_FT + "bench: {rounds: 3, repeats: 2}\n", "bench: unknown field(s) ['repeats']"),
    "wrong type": ("data: {}\n" + GOOD_FT + "bench: {rounds: many}\n", "bench.rounds: expected int"),
    "unknown finetune key": ("data: {}\nfinetune: {task: multilabel, train: {lrr: 1}}\n", "finetune: train: unknown field"),
    "missing input file": (
        "finetune: {task: classify, data: {train: nope.jsonl}}\n",
        "finetune.data.train='nope.jsonl': no such file",
    ),
    "output outside the run": (
        "data: {}\nfinetune: {task: multilabel, train: {out_dir: /tmp/elsewhere}}\n",
        "lies outside the run directory",
    ),
    "disabled producer": ("compress: {method: int8}\n", "compress needs the finetune stage's model but finetune is off"),
    "derived key": (
        "data: {}\nfinetune: {task: multilabel, train: {steps: 5}}\n",
        "finetune.train.steps is derived in fine-tuning; set finetune.finetune.epochs instead",
    ),
    "bad value": ("data: {max_train: 0}\n" + GOOD_FT, "data.max_train must be >= 1"),
    "adapt without finetune": ("data: {}\nadapt: {}\n", "adapt trains the model the finetune stage starts from"),
    "adapt text missing": ("data: {}\nadapt: {text: notes/}\n" + GOOD_FT, "adapt.text='notes/': no such file"),
    "adapt bad ratio": ("data: {}\nadapt: {mask_ratio: 1.5}\n" + GOOD_FT, "adapt.mask_ratio must be in (0, 1)"),
    "missing recipe": ("data: {}\nfinetune: {recipe: best.yaml}\n", "finetune.recipe='best.yaml': no such file"),
    "index unknown key": ("data: {}\n" + GOOD_FT + "index: {max_doc: 40}\n", "index: unknown field(s) ['max_doc']"),
    "index corpus missing": (
        "data: {}\n" + GOOD_FT + "index: {corpus: docs.jsonl}\n",
        "index.corpus='docs.jsonl': no such file; name a JSONL",
    ),
    "index queries missing": (
        "data: {}\n" + GOOD_FT + "index: {queries: q.jsonl, qrels: p.yaml}\n",
        "index.queries='q.jsonl': no such file; fix the path",
    ),
    "index qrels without queries": (
        "data: {}\n" + GOOD_FT + "index: {qrels: p.yaml}\n",
        "index.qrels='p.yaml' is set without index.queries",
    ),
    "index bad dims": ("data: {}\n" + GOOD_FT + "index: {dims: -1}\n", "index.dims must be >= 0 (0 = off), got -1"),
    "index dims wider than the model": (
        "data: {}\n" + GOOD_FT + "index: {dims: 999}\n",
        "index.dims=999 is wider than the model (minilm-l6: 384 dims); use at most 384, e.g. 96 for a quarter",
    ),
    "index without finetune": ("data: {}\nindex: {}\n", "index needs the finetune stage's model but finetune is off"),
    "index without queries": (
        "finetune: {task: classify, data: {train: p.yaml}}\nindex: {}\n",
        "index needs queries: set index.queries and index.qrels, or turn on the data stage",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_pipeline_is_one_line_before_work(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = BAD[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(text)
    res = CliRunner().invoke(app, ["run", "p.yaml", "--out", "runs/x"])
    assert res.exit_code == 1, res.output
    err = res.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error: p.yaml"), err
    assert expected in err, err
    assert not (tmp_path / "runs").exists()  # validated before any work


def test_index_dims_is_checked_against_the_start_models_width_when_the_config_loads(tmp_path: Path, tiny_model: Path) -> None:
    import shutil

    (tmp_path / "p.yaml").write_text("data: {}\n" + GOOD_FT + "index: {dims: 384}\n")
    assert load_pipeline(tmp_path / "p.yaml", tmp_path / "r").index.dims == 384  # the whole width is allowed
    (tmp_path / "p.yaml").write_text("data: {}\n" + GOOD_FT + "index: {dims: 385}\n")
    with pytest.raises(EncoderforgeError, match=r"index.dims=385 is wider than the model \(minilm-l6: 384 dims\)"):
        load_pipeline(tmp_path / "p.yaml", tmp_path / "r")
    run = tmp_path / "emb"  # a start model that is an embed run: its model/ has the width
    shutil.copytree(tiny_model, run / "model")
    (run / "task.json").write_text('{"kind": "embed"}')
    (tmp_path / "p.yaml").write_text(f"data: {{}}\nfinetune: {{task: multilabel, model: {run}}}\nindex: {{dims: 200}}\n")
    with pytest.raises(EncoderforgeError, match=r"index.dims=200 is wider than the model \(.*emb: 128 dims\); use at most 128"):
        load_pipeline(tmp_path / "p.yaml", tmp_path / "r")


def test_set_overrides_and_unknown_set_key(tmp_path: Path) -> None:
    cfg = quickstart_config(smoke=True, out=tmp_path / "r", overrides=["finetune.train.lr=3e-4", "export=false"])
    assert cfg.finetune is not None and cfg.finetune.train.lr == 3e-4 and cfg.export is None
    assert cfg.finetune.train.out_dir == str(tmp_path / "r" / "finetune")
    assert cfg.finetune.data.train == str(tmp_path / "r" / "data" / "train.jsonl")
    assert cfg.stages == ["data", "tokenizer", "adapt", "finetune", "compress", "evaluate", "index", "bench", "report"]
    assert cfg.finetune.model == str(tmp_path / "r" / "adapt" / "mlm" / "model") and cfg.base_model == "minilm-l6"
    with pytest.raises(EncoderforgeError, match="bench: unknown field"):
        quickstart_config(smoke=True, out=tmp_path / "r", overrides=["bench.nope=1"])


def test_shipped_example_loads() -> None:
    cfg = load_pipeline(EXAMPLE, "runs/legal-quickstart", SMOKE)
    assert cfg.base_model == "minilm-l6" and cfg.finetune is not None and cfg.finetune.task == "multilabel"
    assert cfg.stages == [
        "data",
        "tokenizer",
        "adapt",
        "finetune",
        "compress",
        "evaluate",
        "index",
        "bench",
        "export",
        "report",
    ]
    assert cfg.index is not None and (cfg.index.max_docs, cfg.index.max_length) == (120, 64)  # the smoke slice


def test_verdict_compares_the_baseline_with_the_seed_range() -> None:
    from encoderforge.pipeline.summary import verdict

    tests = {"fine-tuned fp32": {"micro_f1": 0.95}, "TF-IDF + LR": {"micro_f1": 0.93}}

    def spread(*xs: float) -> dict:
        import statistics

        return {
            "values": {str(i): x for i, x in enumerate(xs)},
            "mean": statistics.mean(xs),
            "std": statistics.stdev(xs),
            "min": min(xs),
            "max": max(xs),
        }

    assert verdict("micro_f1", tests, spread(0.95, 0.94, 0.96)).startswith("The fine-tuned encoder beat")
    assert "on every seed" in verdict("micro_f1", tests, spread(0.95, 0.94, 0.96))
    assert verdict("micro_f1", tests, spread(0.95, 0.92, 0.94)).startswith("No clear winner")
    assert verdict("micro_f1", tests, spread(0.91, 0.92, 0.90)).startswith("The fine-tuned encoder did NOT")
    assert verdict("micro_f1", {**tests, "fine-tuned fp32": {"micro_f1": 0.96}}).startswith("The fine-tuned encoder beat")
    assert verdict("micro_f1", {**tests, "fine-tuned fp32": {"micro_f1": 0.94}}).startswith("No clear winner")


def test_adapt_verdict_compares_the_seed_ranges() -> None:
    from encoderforge.pipeline.summary import BASE, adapt_verdict

    def spread(*xs: float) -> dict:
        import statistics

        return {
            "values": dict(enumerate(xs)),
            "mean": statistics.mean(xs),
            "std": statistics.stdev(xs),
            "min": min(xs),
            "max": max(xs),
        }

    tests = {"fine-tuned fp32": {"f1": 0.95}, BASE: {"f1": 0.93}}
    assert adapt_verdict("f1", tests, spread(0.95, 0.96), spread(0.92, 0.93)).startswith(
        "The domain stage (adapt) paid off on every seed"
    )
    assert "HURT on every seed" in adapt_verdict("f1", tests, spread(0.90, 0.91), spread(0.92, 0.93))
    assert "no clear difference" in adapt_verdict("f1", tests, spread(0.92, 0.95), spread(0.93, 0.94))
    assert "paid off" in adapt_verdict("f1", {**tests, BASE: {"f1": 0.92}}, None, None)  # one seed, 3 points
    assert "no clear difference" in adapt_verdict("f1", {**tests, BASE: {"f1": 0.945}}, None, None)
    assert adapt_verdict("f1", {"fine-tuned fp32": {"f1": 0.9}}, None, None).startswith("No verdict")


def test_a_search_recipe_feeds_the_finetune_stage(tmp_path: Path) -> None:
    """`finetune: {recipe: best.yaml}` (what `encoderforge search` writes): its hyperparameters, the pipeline's paths."""
    import yaml

    recipe = {
        "task": "multilabel",
        "model": "minilm-l6",
        "data": {"train": "/elsewhere/train.jsonl", "dev": "/elsewhere/dev.jsonl", "label_field": "label"},
        "finetune": {"epochs": 5, "pooling": "cls", "threads": 1},
        "train": {"lr": 1.7e-4, "batch_rows": 16},
    }
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "p.yaml").write_text(f"data: {{}}\nfinetune: {{recipe: {tmp_path / 'best.yaml'}, train: {{seed: 3}}}}\n")
    cfg = load_pipeline(tmp_path / "p.yaml", tmp_path / "r")
    ft = cfg.finetune
    assert ft is not None and (ft.train.lr, ft.train.batch_rows, ft.finetune.epochs, ft.finetune.pooling) == (
        1.7e-4,
        16,
        5,
        "cls",
    )
    assert ft.train.seed == 3 and ft.finetune.threads == 0  # the section's own keys win; threads are the pipeline's
    assert ft.data.train == str(tmp_path / "r" / "data" / "train.jsonl")  # the data stage's files, not the recipe's
    (tmp_path / "p.yaml").write_text(f"data: {{}}\nfinetune: {{recipe: {tmp_path / 'best.yaml'}, task: classify}}\n")
    with pytest.raises(EncoderforgeError, match="'multilabel' recipe"):
        load_pipeline(tmp_path / "p.yaml", tmp_path / "r")
