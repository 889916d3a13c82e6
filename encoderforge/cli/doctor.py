"""`encoderforge doctor`: this machine's CPU flags and the kernel choices measured on it (the cache of
encoderforge.hardware), measuring the default model's choices first with --measure."""

from __future__ import annotations

import json

import typer

from encoderforge.cli.common import fail_on_error


def doctor(
    measure: bool = typer.Option(
        False, "--measure", help="Measure the kernel choices for MiniLM-L6's shapes now (a few seconds)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Print the CPU, its instruction-set flags, library versions and the kernel choices measured on this machine."""
    from encoderforge.recipes.doctor import doctor_report, format_report

    with fail_on_error():
        rep = doctor_report(measure=measure)
    typer.echo(json.dumps(rep, indent=1) if as_json else format_report(rep))
