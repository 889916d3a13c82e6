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
    if (result_dir / "finetune" / "task.json").is_file():
        typer.echo(f"serve it: encoderforge serve {result_dir}   (HTTP on 127.0.0.1:8000; docs at /docs)")


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


def init(
    train: Path = typer.Argument(..., help="Your labelled training file (.csv, .tsv or .jsonl)."),
    test: Path = typer.Option(None, help="Labelled test file (evaluate and compress score it)."),
    dev: Path = typer.Option(None, help="Labelled dev file (default: a held-out tenth of train)."),
    task: str = typer.Option("auto", help="auto (multilabel when labels are lists or a|b cells), classify, multilabel."),
    text_field: str = typer.Option("text", help="The text column / JSON key."),
    label_field: str = typer.Option("label", help="The label column / JSON key."),
    model: str = typer.Option("minilm-l6", help="Start model: zoo name or checkpoint directory."),
    adapt_text: Path = typer.Option(None, help="Unlabelled domain text for the adapt stage (continued MLM); off if unset."),
    out: Path = typer.Option(Path("my-pipeline.yaml"), "--out", "-o", help="The pipeline YAML to write (never replaced)."),
) -> None:
    """Write a pipeline YAML for your own labelled files, checked the way `run` will read them."""
    from encoderforge.pipeline.init import write_init

    with fail_on_error():
        if task not in ("auto", "classify", "multilabel"):
            from encoderforge import EncoderforgeError

            raise EncoderforgeError(f"--task {task!r}; use auto, classify or multilabel (the tasks evaluate supports)")
        path = write_init(
            out,
            train,
            test=test,
            dev=dev,
            task=task,  # type: ignore[arg-type]
            text_field=text_field,
            label_field=label_field,
            model=model,
            adapt_text=adapt_text,
        )
    typer.echo(f"wrote {path}; run it: encoderforge run {path} --out runs/{path.stem}")
