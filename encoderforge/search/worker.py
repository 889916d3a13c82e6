"""One search worker process: take trials from the shared Optuna journal until the deadline, each an ordinary
fine-tuning run (the ONE loop) on one thread, its dev metric reported to the pruner at every evaluation.

    python -m encoderforge.search.worker DIR --until UNIX_TIME --worker K      (started by search/study.py)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from encoderforge import EncoderforgeError
from encoderforge.search.space import load_space
from encoderforge.search.study import open_study, remove_weights

MAX_FAILURES = 3


def pretrain_objective(run: Path, space: Any) -> Any:
    """A pretraining trial: the recipe at the trial's values for its fixed steps; the held-out MLM loss at the end."""
    from encoderforge.recipes.pretrain import pretrain

    def trial_fn(trial: Any) -> float:
        values = {p.key: p.suggest(trial) for p in space.params}
        out = run / "trials" / f"{trial.number:04d}"
        t0 = time.perf_counter()
        try:
            final = pretrain(space.config(values, out))
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            remove_weights(out)
        if space.metric not in final:
            raise EncoderforgeError(f"{out}: the run reported no {space.metric}; prepare the shards with a held-out split")
        trial.set_user_attr("dev", {k: v for k, v in final.items() if isinstance(v, (int, float))})
        return float(final[space.metric])

    return trial_fn


def objective(run: Path, space: Any, until: float) -> Any:
    import optuna

    from encoderforge.recipes.finetune import finetune

    if space.kind == "pretrain":
        return pretrain_objective(run, space)

    def trial_fn(trial: Any) -> float:
        values = {p.key: p.suggest(trial) for p in space.params}
        out = run / "trials" / f"{trial.number:04d}"
        cfg = space.config(values, out)

        def report(epochs: float, value: float) -> None:
            # the pruner's resource: dev evaluations, the same unit whatever the batch size
            step = max(1, round(epochs * cfg.finetune.evals_per_epoch))
            trial.report(value, step)
            last = epochs >= cfg.finetune.epochs - 1e-9  # a finished run is scored, never pruned at its end
            if not last and time.time() >= until:  # the budget is spent: stop here (within one evaluation of it)
                trial.set_user_attr("stopped_by_budget_at_epoch", round(epochs, 2))
                raise optuna.TrialPruned(f"epoch {epochs:.2f}: the search's budget is spent")
            if not last and trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", round(epochs, 2))
                raise optuna.TrialPruned(f"epoch {epochs:.2f}: dev {value:.4f}")

        t0 = time.perf_counter()
        try:
            result = finetune(cfg, overwrite=True, report=report)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            remove_weights(out)
        m = result.metrics
        primary = m["primary"]
        trial.set_user_attr("dev", {k: v for k, v in m["dev"].items() if isinstance(v, (int, float))})
        if "test" in m:
            trial.set_user_attr("test", {k: v for k, v in m["test"].items() if isinstance(v, (int, float))})
        if "probe" in m:
            trial.set_user_attr(
                "probe_test", {k: v for k, v in m["probe"].get("test", {}).items() if isinstance(v, (int, float))}
            )
        trial.set_user_attr("train_s", m["train_s"])
        trial.set_user_attr("epochs_run", m["epochs_run"])
        return float(m["dev"][primary])

    return trial_fn


def main() -> None:
    import optuna

    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--until", type=float, required=True)
    p.add_argument("--worker", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Path(a.run)
    space = load_space(run / "space.yaml")
    study = open_study(run, space, seed_offset=a.worker)
    fn = objective(run, space, a.until)

    failures = [0]

    def past_deadline(study: Any, trial: Any) -> None:
        failures[0] = failures[0] + 1 if trial.state.name == "FAIL" else 0
        if time.time() >= a.until or failures[0] >= MAX_FAILURES:
            study.stop()  # the deadline, or the same failure over and over (see this worker's log)

    left = a.until - time.time()
    if left > 0:
        # timeout: no trial starts after the deadline; the callback also stops between trials
        # a trial that fails (a config the data refuses, a diverged run, out of memory) is marked failed, its error
        # logged here, and the search goes on; MAX_FAILURES in a row stop this worker
        study.optimize(fn, timeout=left, callbacks=[past_deadline], catch=(Exception,), gc_after_trial=True)


if __name__ == "__main__":
    main()
