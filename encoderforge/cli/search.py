"""`encoderforge search SPACE.yaml --budget 30m --out DIR`: a thin command over encoderforge.search.study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from encoderforge.cli.common import fail_on_error


def search(
    space: Path = typer.Argument(..., help="The search space YAML (see `encoderforge.search.space` and configs/search-*.yaml)."),
    budget: str = typer.Option(..., "--budget", help="Wall-clock budget over every invocation, e.g. 30m, 2h, 90s."),
    out: Path = typer.Option(..., "--out", "-o", help="Search directory (journal, trials, results, best.yaml); rerun to resume."),
    workers: Optional[int] = typer.Option(
        None, help="Trials at once, one thread each (default: the space's, else the CPU count)."
    ),
) -> None:
    """Search fine-tuning hyperparameters on Optuna (TPE + Hyperband pruning) within a time budget; resumable after a
    kill; writes results.md/.csv, pareto.png and best.yaml (a recipe for `finetune --config` and `run`)."""
    from encoderforge import EncoderforgeError
    from encoderforge.fileio import check_output
    from encoderforge.search.space import parse_budget
    from encoderforge.search.study import search as run_search

    with fail_on_error():
        seconds = parse_budget(budget)
        if workers is not None and workers < 1:
            raise EncoderforgeError(f"--workers must be >= 1, got {workers}")
        if not space.is_file():
            raise EncoderforgeError(f"{space}: no such file; give the search space YAML")
        check_output(out, [space], expect="dir")
        summary = run_search(space, out, seconds, workers=workers)
    typer.echo(json.dumps(summary, indent=2))
    plot = f", {out}/pareto.png" if (out / "pareto.png").is_file() else ""
    best = f", best recipe: {out}/best.yaml" if summary["best"] else ""
    typer.echo(f"results: {out}/results.md{plot}{best}", err=True)
