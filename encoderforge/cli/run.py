"""`encoderforge run`, `report` and `quickstart`: thin commands over encoderforge.pipeline."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from encoderforge.cli.common import fail_on_error


def _finish(result_dir: Path) -> None:
    from encoderforge.pipeline.summary import summarize, table_text

    typer.echo(table_text(summarize(result_dir)))
    report = result_dir / "report" / "report.html"
    typer.echo(f"report: {report}" if report.is_file() else f"run directory: {result_dir} (no report stage)")


def run(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML (see examples/legal-quickstart.yaml)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default: the file's `out:` or runs/<file stem>)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: stage.key=value, e.g. finetune.train.lr=1e-4."),
) -> None:
    """Run a lifecycle pipeline; unchanged stages are skipped, a killed run resumes."""
    from encoderforge.pipeline.config import load_pipeline
    from encoderforge.pipeline.runner import run_pipeline

    with fail_on_error():
        cfg = load_pipeline(pipeline, out, set_)
        res = run_pipeline(
            cfg,
            command=shlex.join(
                ["encoderforge", "run", str(pipeline), "--out", str(cfg.run_dir), *(a for s in set_ for a in ("--set", s))]
            ),
        )
        _finish(res.run_dir)


def report(run_dir: Path = typer.Argument(..., help="A run directory written by `encoderforge run`.")) -> None:
    """Regenerate a run's HTML report from its metrics files."""
    from encoderforge.pipeline.report import write_report

    with fail_on_error():
        path = write_report(run_dir)
    typer.echo(f"report: {path}")


def quickstart(
    smoke: bool = typer.Option(False, help="Tiny slices, the same stages (under 2 minutes on 2 cores)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/legal-quickstart[-smoke])."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: stage.key=value."),
) -> None:
    """The legal quickstart: MiniLM-L6 on licensedcode rule snippets -> int8 -> evaluate -> bench -> export -> report."""
    from encoderforge.pipeline.quickstart import EXPECTED, quickstart_config
    from encoderforge.pipeline.runner import run_pipeline

    with fail_on_error():
        cfg = quickstart_config(smoke=smoke, out=out, overrides=set_)
        print(
            f"quickstart{' --smoke' if smoke else ''}: expected duration {EXPECTED[smoke]}; writing {cfg.run_dir}",
            file=sys.stderr,
            flush=True,
        )
        cmd = [
            "encoderforge",
            "quickstart",
            *(["--smoke"] if smoke else []),
            "--out",
            str(cfg.run_dir),
            *(a for s in set_ for a in ("--set", s)),
        ]
        res = run_pipeline(cfg, command=shlex.join(cmd))
        _finish(res.run_dir)
