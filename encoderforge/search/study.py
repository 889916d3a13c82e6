"""`encoderforge search SPACE.yaml --budget 30m --out DIR`: a budgeted hyperparameter search of fine-tuning on
Optuna (TPE sampler, Hyperband / successive-halving pruner on the dev metric at each evaluation).

    DIR/
      space.yaml        the space as given (a resumed search must be given the same one)
      study.journal     Optuna's journal storage: every trial, its parameters, values and state (append-only)
      budget.json       seconds spent so far over every invocation (the budget is the total, resumes included)
      trials/NNNN/      each trial's fine-tuning run (metrics.json, config.json, metrics.jsonl; model/ removed)
      results.csv/.md   every trial: state, parameters, dev and test metric, seconds   (results.py)
      pareto.png        dev metric vs training seconds, the Pareto front marked
      best.yaml         the best trial as a fine-tuning recipe: `finetune TASK --config best.yaml` reproduces it

Trials run `workers` at a time, each in its own process with one thread (processes, not threads: torch's thread
count is per process, and a worker killed with the search dies with it). A search killed at any point resumes
where it stopped: finished and pruned trials stay in the journal and are never rerun; a trial that was running
is marked failed and its parameters are queued again. Workers start no trial once the budget is spent, and a
fine-tuning trial still running then stops at its next dev evaluation (recorded as pruned, "stopped by the
budget"), so the search ends within one evaluation of its budget (a pretraining trial: within one trial).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from encoderforge import EncoderforgeError, require
from encoderforge.fileio import atomic_file
from encoderforge.search.space import SearchSpace, load_space

STUDY = "finetune-search"


def storage(run: Path) -> Any:
    optuna = require("optuna", "search")
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(run / "study.journal")
    return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def open_study(run: Path, space: SearchSpace, seed_offset: int = 0) -> Any:
    optuna = require("optuna", "search")
    pruner = {
        # the maximum resource is fixed from the space, so every worker (and every resume) builds the same brackets
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=space.max_evals(), reduction_factor=3),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        "none": lambda: optuna.pruners.NopPruner(),
    }[space.pruner]()
    direction = "maximize" if space.maximize else "minimize"
    sampler = optuna.samplers.TPESampler(seed=space.seed + seed_offset, n_startup_trials=4)
    return optuna.create_study(
        study_name=STUDY, storage=storage(run), direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
    )


def search(space_path: str | Path, out: str | Path, budget_s: float, *, workers: int | None = None) -> dict[str, Any]:
    """Run (or resume) the search in `out` until `budget_s` seconds have been spent in total; returns the summary
    that results.write_results wrote (best trial, counts)."""
    require("optuna", "search")
    from encoderforge.search.estimate import check_budget
    from encoderforge.search.results import write_results

    space = load_space(space_path)
    run = Path(out)
    given = Path(space_path).read_text(encoding="utf-8")
    if (run / "space.yaml").is_file():
        if (run / "space.yaml").read_text(encoding="utf-8") != given:
            raise EncoderforgeError(
                f"{run}: holds a search over another space; resume with the same SPACE file or use another --out"
            )
    elif run.exists() and any(run.iterdir()):
        raise EncoderforgeError(f"{run}: exists and is not a search directory; choose a new --out")
    spent = float(json.loads((run / "budget.json").read_text())["spent_s"]) if (run / "budget.json").is_file() else 0.0
    left = budget_s - spent
    if left <= 0:
        print(f"{run}: the budget is spent ({spent:.0f} s of {budget_s:.0f} s); writing the results", file=sys.stderr)
        lock = hold_lock(run)  # no search may be running here while its trials are called interrupted
        try:
            mark_interrupted(open_study(run, space))
            return write_results(run, space, open_study(run, space), budget_s, spent)
        finally:
            lock.close()
    else:
        fresh = not (run / "space.yaml").is_file()
        if fresh:
            check_budget(space, left)  # a budget below one trial's cost fails before anything is written
            run.mkdir(parents=True, exist_ok=True)
            with atomic_file(run / "space.yaml") as f:
                f.write(given)
        lock = hold_lock(run)  # one search per directory; the workers inherit the lock and hold it while they live
        study = open_study(run, space)
        for t in requeue_interrupted(study):
            remove_weights(run / "trials" / f"{t:04d}")
        if not study.trials and (d := space.defaults()) is not None:
            study.enqueue_trial(d, user_attrs={"defaults": True})  # the defaults, measured in the same study
        try:
            spent = run_workers(run, workers or space.workers, spent, left, lock, Ticker(study, space, budget_s, spent))
        finally:  # even when a worker failed: the table and best.yaml describe every trial that ran
            summary = write_results(run, space, open_study(run, space), budget_s, spent)
        return summary


def hold_lock(run: Path) -> Any:
    """An exclusive lock on DIR/.search.lock, or an error when another search (or its workers) holds it."""
    import fcntl

    f = open(run / ".search.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise EncoderforgeError(f"{run}: another search is running on this directory; wait for it or use another --out") from None
    return f


def requeue_interrupted(study: Any) -> list[int]:
    """Trials left RUNNING by a killed search (the lock proves none is alive): mark them failed and queue their
    parameters again; returns their numbers."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        params = {**t.system_attrs.get("fixed_params", {}), **t.params}
        study.enqueue_trial(params, user_attrs={**t.user_attrs, "requeued_from": t.number})
    return [t.number for t in stale]


def mark_interrupted(study: Any) -> list[int]:
    """Trials left RUNNING by a killed search when no budget is left to rerun them: failed, noted as interrupted (a
    results table must not show a dead trial as running)."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return [t.number for t in stale]


class Ticker:
    """One stderr line per trial that ends (its state, metric, the best so far, the budget spent): what a user
    watching a 30-minute search sees."""

    def __init__(self, study: Any, space: SearchSpace, budget_s: float, spent: float):
        self.study, self.space, self.budget_s, self.spent0 = study, space, budget_s, spent
        self.seen = {t.number for t in study.trials if t.state.is_finished()}

    def __call__(self, elapsed: float) -> None:
        ended = [t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in self.seen]
        for t in sorted(ended, key=lambda t: t.number):
            self.seen.add(t.number)
            done = [x.value for x in self.study.get_trials(deepcopy=False) if x.state.name == "COMPLETE"]
            best = (max if self.space.maximize else min)(done) if done else None
            value = f"{self.space.metric} {t.value:.4f}" if t.value is not None else t.state.name.lower()
            print(f"trial {t.number}: {value}" + (f" (best {best:.4f})" if best is not None else "")
                  + f"; {self.spent0 + elapsed:.0f} s of {self.budget_s:.0f} s spent", file=sys.stderr, flush=True)  # fmt: skip


def run_workers(run: Path, n: int, spent: float, left: float, lock: Any, tick: Any = None) -> float:
    """Start `n` worker processes that take trials until the deadline; keep budget.json current; return the total
    seconds spent. A worker dies with this process (PR_SET_PDEATHSIG), so kill -9 here stops every trial; where that
    does not exist, the inherited lock keeps a second search out while an orphaned worker lives."""
    deadline = time.time() + left
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "encoderforge.search.worker", str(run), "--until", repr(deadline)]
    logs = run / "logs"
    logs.mkdir(exist_ok=True)
    procs = [
        subprocess.Popen(
            [*cmd, "--worker", str(i)],
            env=env,
            stdout=open(logs / f"worker{i}.log", "a"),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            start_new_session=True,  # Ctrl-C stops this process, which kills them: their trials stay RUNNING, requeued
            pass_fds=(lock.fileno(),),
        )
        for i in range(n)
    ]
    t0 = time.time()
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(2)
            save_spent(run, spent + time.time() - t0)
            if tick is not None:
                tick(time.time() - t0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        total = spent + time.time() - t0
        save_spent(run, total)
    bad = [i for i, p in enumerate(procs) if p.returncode not in (0, None)]
    if bad:
        tail = (logs / f"worker{bad[0]}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise EncoderforgeError(
            f"{run}: search worker {bad[0]} failed: {tail[0] if tail else '?'} (see {logs}/worker{bad[0]}.log)"
        )
    return total


def save_spent(run: Path, seconds: float) -> None:
    with atomic_file(run / "budget.json") as f:
        json.dump({"spent_s": round(seconds, 1)}, f)


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the parent dies (Linux prctl; elsewhere a no-op)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def remove_weights(trial_dir: Path) -> None:
    """A finished trial keeps its metrics and config (best.yaml retrains the winner); its weights would fill the disk."""
    for sub in ("model", "checkpoints"):
        shutil.rmtree(trial_dir / sub, ignore_errors=True)
