"""`encoderforge compress TEACHER --recipe recipe.yaml --out DIR`: a thin command over encoderforge.recipes.compress."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from encoderforge.cli.common import fail_on_error


def compress(
    teacher: Optional[Path] = typer.Argument(None, help="A fine-tuned run directory (default: the recipe's `teacher:`)."),
    recipe: Path = typer.Option(..., "--recipe", "-r", help="The compression recipe YAML (e.g. configs/compress-r8.yaml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: one folder per step and report/; rerun to resume."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a finished compression run (only one encoderforge wrote)."
    ),
) -> None:
    """Distil, prune (structured or unstructured) and quantize a fine-tuned model step by step, then measure every
    step beside transformers and ONNX Runtime in one run: report/table.md, results.json, pareto.png."""
    from encoderforge import EncoderforgeError
    from encoderforge.compression.recipe import load_recipe
    from encoderforge.recipes.compress import compress as run_compress

    with fail_on_error():
        if not recipe.is_file():
            raise EncoderforgeError(f"{recipe}: no such file; give the compression recipe YAML (see configs/compress-r8.yaml)")
        res = run_compress(load_recipe(recipe), out, teacher=teacher, overwrite=overwrite)
    typer.echo((out / "report" / "table.md").read_text(encoding="utf-8"))
    typer.echo(f"report: {out}/report/table.md, results.json, pareto.png ({len(res.steps)} steps)", err=True)
