"""`encoderforge export ...`: export a checkpoint to a serving format (ONNX, optionally int8)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from encoderforge.cli.common import fail_on_error

app = typer.Typer(
    help="Export a checkpoint to ONNX (fp32 or int8) for ONNX Runtime.", no_args_is_help=True, pretty_exceptions_enable=False
)


class OnnxPooling(str, Enum):
    none = "none"
    mean = "mean"
    cls = "cls"


@app.callback()
def _group() -> None:
    """Export a checkpoint to a serving format."""  # a callback keeps `onnx` a sub-command even while it is the only one


@app.command()
def onnx(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Checkpoint directory (encoderforge or HF BERT), zoo name, or an `embed` run (exports the run's own vectors: "
        "its pooling, rotation, Matryoshka dims and normalisation).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output .onnx file (written atomically)."),
    pooling: Optional[OnnxPooling] = typer.Option(
        None,
        help="none (the default for a checkpoint): output last_hidden_state (B, T, C); mean / cls: output pooled (B, C). "
        "An embed run uses its own.",
    ),
    int8: bool = typer.Option(False, "--int8", help="Dynamic int8 quantization with ONNX Runtime (~4x smaller)."),
    opset: int = typer.Option(17, help="ONNX opset version."),
) -> None:
    """Export to ONNX with dynamic batch and sequence axes, then check ONNX Runtime against torch."""
    from encoderforge import EncoderforgeError
    from encoderforge.inference.onnx_export import export_checkpoint
    from encoderforge.recipes.export_run import export_embed_run, is_embed_run

    with fail_on_error():
        if not 14 <= opset <= 20:  # torch.onnx's TorchScript exporter: 14 is the first with the ops our attention uses
            raise EncoderforgeError(f"--opset must be between 14 and 20, got {opset} (17 is the default and tested)")
        what = ""
        if is_embed_run(model):
            r, what = export_embed_run(model, out, pooling=pooling.value if pooling else None, int8=int8, opset=opset)
        else:
            r = export_checkpoint(model, out, pooling=(pooling or OnnxPooling.none).value, int8=int8, opset=opset)
    typer.echo(str(r.path) + (f" (the run's vectors: {what})" if what else ""))
    typer.echo(
        f"parity vs {'the run as index/serve load it' if what else 'torch fp32'} on {r.n_texts} texts: max |diff| {r.max_abs_diff:.2e}, "
        f"cosine mean {r.mean_cosine:.5f} / min {r.min_cosine:.5f}"
    )
    typer.echo(f"size: {r.size_bytes / 2**20:.1f} MiB ({r.size_bytes} bytes)")


if __name__ == "__main__":
    app()
