"""`encoderforge search` (encoderforge/search/): the space file's errors, a real search on a tiny model with two
worker processes (budget kept, results, plot, best.yaml that reproduces its trial), and kill -9 + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from encoderforge import EncoderforgeError
from encoderforge.recipes.finetune_config import default_lr
from encoderforge.search.space import load_space, parse_budget

optuna = pytest.importorskip("optuna")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def data(tmp_path, bbc_rows) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for name, part in (("train", bbc_rows[:70]), ("dev", bbc_rows[70:])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"text": t[:200], "label": y}) + "\n" for y, t in part))
    return d


def write_space(path: Path, model: Path, data: Path, **over) -> Path:
    space = {
        "task": "classify",
        "fixed": {
            "model": str(model),
            "data.train": str(data / "train.jsonl"),
            "data.dev": str(data / "dev.jsonl"),
            "finetune.max_length": 48,
            "train.batch_rows": 8,
        },  # fmt: skip
        "search": {
            "train.lr": {"low": 1e-5, "high": 1e-3, "log": True},
            "finetune.epochs": {"low": 1, "high": 3},
            "finetune.head_init": ["auto", "random"],
        },  # fmt: skip
        "workers": 2,
        **over,
    }
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.parametrize(
    "over, match",
    [
        ({"search": {}}, "search: is empty"),
        ({"search": {"train.lr": {"low": 1e-3, "high": 1e-5}}}, r"search.train.lr: low=0.001 is not below high"),
        ({"search": {"train.lr": []}}, "search.train.lr: an empty list"),
        ({"search": {"train.lrr": [1e-4, 2e-4]}}, r"search.train.lrr=0.0001: .*unknown field.*'lrr'"),
        ({"search": {"finetune.pooling": ["mean", "max"]}}, r"search.finetune.pooling='max'"),
        ({"search": {"train.batch_rows": [8, 16]}}, "train.batch_rows is both fixed and searched"),
        ({"search": {"train.out_dir": ["a", "b"]}}, "set by the search for each trial"),
        ({"pruner": "median"}, "pruner: 'median'"),
        ({"fixed": {"finetune.epochz": 2}}, r"fixed.finetune.epochz=2: .*unknown"),
        ({"task": "summarize"}, "task: 'summarize'"),
        ({"search": {"train.lr": {"low": 0, "high": 1e-3, "log": True}}}, "a log range needs low > 0"),
    ],
)
def test_bad_spaces_fail_naming_the_key(tmp_path, tiny_model, data, over, match) -> None:
    with pytest.raises(EncoderforgeError, match=match):
        load_space(write_space(tmp_path / "space.yaml", tiny_model, data, **over))


def test_budget_strings() -> None:
    assert (parse_budget("90s"), parse_budget("30m"), parse_budget("1.5h")) == (90, 1800, 5400)
    for bad in ("30", "0m", "-5m", "soon"):
        with pytest.raises(EncoderforgeError, match="--budget"):
            parse_budget(bad)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "encoderforge.cli.app", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_a_budget_below_one_trial_is_refused_before_anything_is_written(tmp_path, tiny_model, data) -> None:
    space = write_space(tmp_path / "space.yaml", tiny_model, data)
    r = cli("search", str(space), "--budget", "0.01s", "--out", str(tmp_path / "s"))
    assert r.returncode == 1 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    assert "less than one trial" in r.stderr and "raise --budget" in r.stderr
    assert not (tmp_path / "s").exists()


def trials(run: Path) -> list:
    from encoderforge.search.study import open_study

    return open_study(run, load_space(run / "space.yaml")).trials


@pytest.mark.slow
def test_search_runs_within_budget_and_best_yaml_reproduces_its_trial(tmp_path, tiny_model, data) -> None:
    space, out = write_space(tmp_path / "space.yaml", tiny_model, data, pruner="none"), tmp_path / "s"
    r = cli("search", str(space), "--budget", "20s", "--out", str(out))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    done = [t for t in trials(out) if t.state.name == "COMPLETE"]
    assert len(done) >= 2 and summary["trials"]["complete"] == len(done)
    assert f"trial 0: accuracy {done[0].value:.4f}" in r.stderr  # a line per finished trial while it runs
    first = trials(out)[0]
    assert (
        first.user_attrs.get("defaults") and first.params["train.lr"] == default_lr("classify") and first.state.name == "COMPLETE"
    )
    # the budget holds within one trial: no trial started after it was spent
    longest = max(t.user_attrs["seconds"] for t in trials(out) if "seconds" in t.user_attrs)
    assert summary["spent_s"] <= 20 + longest + 15  # + worker start-up
    assert all((t.datetime_start.timestamp() - trials(out)[0].datetime_start.timestamp()) < 20 + 5 for t in trials(out))
    assert (out / "pareto.png").stat().st_size > 1000 and "| trial |" in (out / "results.md").read_text()
    assert not any((out / "trials").glob("*/model"))  # weights of finished trials are not kept
    best = summary["best"]
    assert best["dev"] == max(t.value for t in done)
    # best.yaml is a recipe `finetune --config` takes, and it reproduces the trial's dev score exactly
    r = cli("finetune", "classify", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["dev"]["accuracy"] == best["dev"]


@pytest.mark.slow
def test_a_search_killed_mid_way_resumes_without_repeating_finished_trials(tmp_path, tiny_model, data) -> None:
    space, out = write_space(tmp_path / "space.yaml", tiny_model, data, pruner="none"), tmp_path / "s"
    cmd = [sys.executable, "-m", "encoderforge.cli.app", "search", str(space), "--budget", "10m", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(1)
        states = [t.state.name for t in trials(out)] if (out / "study.journal").exists() else []
        if states.count("COMPLETE") >= 2 and "RUNNING" in states:  # killed in the middle of a trial
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # the workers die with it (PR_SET_PDEATHSIG)
    before = {t.number: t.value for t in trials(out) if t.state.name == "COMPLETE"}
    running = [t.number for t in trials(out) if t.state.name == "RUNNING"]
    assert len(before) >= 2 and running
    spent = json.loads((out / "budget.json").read_text())["spent_s"]
    # resume with a budget just past what was spent: the interrupted trials run again, the finished ones never
    r = cli("search", str(space), "--budget", f"{spent + 8:.0f}s", "--out", str(out))
    assert r.returncode == 0, r.stderr
    after = trials(out)
    assert all(after[n].state.name == "COMPLETE" and after[n].value == v for n, v in before.items())
    for n in running:
        assert after[n].state.name == "FAIL"
        assert any(t.user_attrs.get("requeued_from") == n for t in after)  # its parameters were queued again
    # the requeued copies are of the interrupted trials only, never of a finished one
    copies = [t for t in after if "requeued_from" in t.user_attrs]
    assert {t.user_attrs["requeued_from"] for t in copies} == set(running)
    assert all(t.state.name != "RUNNING" for t in after)  # nothing is left looking alive after a clean end
    assert json.loads((out / "budget.json").read_text())["spent_s"] > spent  # the budget adds up over the resume


def test_a_trial_killed_as_the_budget_ran_out_reads_as_interrupted_not_running(tmp_path, tiny_model, data) -> None:
    from encoderforge.search.study import open_study, search

    space_file, out = write_space(tmp_path / "space.yaml", tiny_model, data), tmp_path / "s"
    out.mkdir()
    (out / "space.yaml").write_text(space_file.read_text())
    (out / "budget.json").write_text(json.dumps({"spent_s": 61.0}))
    study = open_study(out, load_space(space_file))
    dead = study.ask().number  # RUNNING in the journal, its worker gone: what a kill at the deadline leaves
    summary = search(space_file, out, 60.0)
    assert summary["trials"]["running"] == 0 and summary["trials"]["fail"] == 1
    after = trials(out)[dead]
    assert after.state.name == "FAIL" and after.user_attrs["interrupted"] is True
    assert "interrupted by a kill; the budget was spent" in (out / "results.md").read_text()


def test_the_last_dev_evaluation_of_a_fractional_epoch_run_reports_its_full_epochs(tmp_path, tiny_model, data) -> None:
    """epochs x steps per epoch rounds to the run's steps (1.25 x 9 -> 11 steps = 1.22 epochs): the final evaluation
    must still read as the run's end, or a search trial that finished is stopped ("by the budget") and loses its score."""
    from encoderforge.recipes.finetune import finetune
    from encoderforge.recipes.finetune_config import finetune_config

    values = {
        "model": str(tiny_model),
        "data.train": str(data / "train.jsonl"),
        "data.dev": str(data / "dev.jsonl"),
        "train.out_dir": str(tmp_path / "run"),
        "finetune.max_length": 32,
        "train.batch_rows": 8,
        "finetune.epochs": 1.25,
        "finetune.probe": False,
    }
    seen: list[float] = []
    finetune(finetune_config("classify", values=values), report=lambda epochs, value: seen.append(epochs))
    assert seen and seen[-1] == 1.25 and all(e < 1.25 for e in seen[:-1]), seen
