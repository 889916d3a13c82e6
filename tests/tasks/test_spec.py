"""The task registry's contract: typed specs with their dev metric and direction, one head loader, tasks that share
modules instead of importing each other, and optional dependencies imported where they are used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import encoderforge.tasks as tasks_pkg
from encoderforge import EncoderforgeError
from encoderforge.model.config import preset
from encoderforge.tasks.registry import TASKS
from encoderforge.tasks.spec import TaskSpec

# the modules of tasks/ that several tasks share (or that register them all); anything else is a task of its own
SHARED = {"__init__", "spec", "registry", "objectives", "pooled", "sequences", "masked"}
SHARED |= {"embed_model", "embed_losses", "embed_metrics"}  # the bi-encoder's model, losses and metrics
# ColBERT is the bi-encoder task with token vectors instead of one: it wraps EmbedTask's texts, no-duplicates batches
# and dev retrieval rather than copying them (the one allowed task -> task import)
ALLOWED = {("colbert.py", "encoderforge.tasks.embed")}
TASK_DIR = Path(tasks_pkg.__file__).parent


def test_every_spec_declares_its_dev_metric_and_direction():
    assert {k: (s.primary, s.greater_is_better) for k, s in TASKS.items()} == {
        "classify": ("accuracy", True),
        "multilabel": ("micro_f1", True),
        "ner": ("f1", True),
        "regress": ("pearson", True),
        "qa": ("f1", True),
        "embed": ("ndcg@10", True),
        "colbert": ("ndcg@10", True),
        "rerank": ("mrr", True),
    }
    assert all(isinstance(s, TaskSpec) and s.kind == k for k, s in TASKS.items())
    assert TaskSpec.__dataclass_fields__["greater_is_better"].default is True


def test_tasks_import_shared_modules_never_each_other():
    offenders = []
    for path in sorted(TASK_DIR.glob("*.py")):
        if path.stem in ("registry", "objectives"):  # registries import every task by design
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module == "encoderforge.tasks":
                names += [f"encoderforge.tasks.{a.name}" for a in node.names if a.name.islower()]
            for name in names:
                parts = name.split(".")
                if parts[:2] == ["encoderforge", "tasks"] and len(parts) > 2 and parts[2] not in SHARED:
                    if (path.name, name) not in ALLOWED:
                        offenders.append(f"{path.name} imports {name}")
    assert offenders == []


def test_one_head_loader_round_trips_every_head():
    cfg = preset("bert-tiny", vocab_size=100)
    meta = {"labels": ["a", "b", "c"], "pooling": "cls", "mean": 0.0, "std": 1.0}
    for kind, spec in TASKS.items():
        torch.manual_seed(0)
        trained = spec.build_head(cfg, meta)
        state = {k: v + 1.0 for k, v in trained.state_dict().items()}
        head = spec.load_head(cfg, meta, state)
        assert not head.training, kind
        assert all(torch.equal(head.state_dict()[k], v) for k, v in state.items()), kind
    three = TASKS["classify"].build_head(cfg, meta).state_dict()
    with pytest.raises(EncoderforgeError, match="the saved classify head does not fit task.json"):
        TASKS["classify"].load_head(cfg, {**meta, "labels": ["a", "b"]}, three)  # a 3-label head, 2 labels


def test_task_modules_load_without_the_eval_extra():
    """seqeval and scipy are imported where they are used: training and prediction code loads without them."""
    code = (
        "import sys\nsys.modules.update(seqeval=None, scipy=None)\n"
        "import encoderforge.tasks.registry, encoderforge.tasks.objectives, encoderforge.recipes.predict\n"
        "print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def _missing(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make `package` and its submodules unimportable, as if it were not installed."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_seqeval_is_a_one_line_error_naming_the_extra(monkeypatch):
    from encoderforge.tasks.ner import entity_counts

    assert entity_counts([["B-x", "I-x", "O"]], [["B-x", "I-x", "O"]]) == (1, 1, 1)
    _missing(monkeypatch, "seqeval")
    with pytest.raises(EncoderforgeError) as e:
        entity_counts([["B-x"]], [["B-x"]])
    msg = str(e.value)
    assert "\n" not in msg and "seqeval" in msg and "pip install 'encoderforge[eval]'" in msg


def test_missing_scipy_is_a_one_line_error_naming_the_extra(monkeypatch):
    from encoderforge.tasks.pairs import correlations

    got = correlations(np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0]))
    assert got["spearman"] == pytest.approx(1.0) and 0.9 < got["pearson"] < 1.0
    _missing(monkeypatch, "scipy")
    with pytest.raises(EncoderforgeError) as e:
        correlations(np.zeros(3), np.zeros(3))
    msg = str(e.value)
    assert "\n" not in msg and "scipy" in msg and "pip install 'encoderforge[eval]'" in msg
