"""The command line: a thin map from commands to library functions (one call each, no logic)."""

from __future__ import annotations

import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from encoderforge import EncoderforgeError
from encoderforge.cli import compress as cli_compress
from encoderforge.cli import doctor as cli_doctor
from encoderforge.cli import export as cli_export
from encoderforge.cli import finetune as cli_finetune
from encoderforge.cli import index as cli_index
from encoderforge.cli import pretrain as cli_pretrain
from encoderforge.cli import run as cli_run
from encoderforge.cli import search as cli_search
from encoderforge.cli import serve as cli_serve
from encoderforge.cli import tokenizer as cli_tokenizer
from encoderforge.cli.common import Pooling, PrecisionOpt, fail_on_error, os_error_line
from encoderforge.fileio import check_output

app = typer.Typer(
    help="encoderforge: build small, fast, domain-specialized BERT-style encoders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(cli_tokenizer.app, name="tokenizer")
app.add_typer(cli_pretrain.data_app, name="data")
app.add_typer(cli_pretrain.app, name="pretrain")
app.add_typer(cli_export.app, name="export")
app.command("doctor")(cli_doctor.doctor)


class Format(str, Enum):
    ours = "ours"
    hf = "hf"


@app.command()
def embed(
    input: str = typer.Argument("-", help="UTF-8 text file, one text per line; '-' reads stdin."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: .npy (float32 matrix) or .jsonl ({text, vector})."),
    model: str = typer.Option(
        "minilm-l6",
        help="Checkpoint directory (encoderforge or HF BERT), zoo name, or an `embed` run (its own pooling, length, "
        "normalisation, rotation and Matryoshka dims; a different --pooling, --normalize or --max-length is an error).",
    ),
    pooling: Optional[Pooling] = typer.Option(None, help="mean (sentence-transformers; the default) or cls."),
    normalize: Optional[bool] = typer.Option(None, help="L2-normalize the vectors (default: yes)."),
    max_tokens: int = typer.Option(2048, help="Token budget per forward pass (caps memory)."),
    max_length: Optional[int] = typer.Option(None, help="Longest sequence in tokens (default 256); longer texts are truncated."),
    precision: PrecisionOpt = typer.Option(
        PrecisionOpt.fp32,
        help="GEMM precision on CPU: fp32; bf16 (needs AVX512-BF16 or AMX; kept only if the sample embeddings stay "
        "within cosine 0.999 of fp32); auto (bf16 where the CPU has it and it measures faster).",
    ),
) -> None:
    """Embed texts into vectors with the padding-free engine."""
    from encoderforge.recipes.embed import embed_file

    with fail_on_error():
        r = embed_file(
            model,
            input,
            out,
            pooling=pooling.value if pooling else None,
            normalize=normalize,
            max_tokens=max_tokens,
            max_length=max_length,
            precision=precision.value,
        )
    typer.echo(
        f"wrote {r.count} vectors of dim {r.dim} to {r.out} ({r.precision}, {r.kernel} linears"
        + (f"; {r.truncated} truncated" if r.truncated else "")
        + ")"
    )
    if r.note:
        typer.echo(f"note: {r.note}", err=True)


@app.command()
def convert(
    src: str = typer.Argument(..., help="Source checkpoint directory (HF BERT or encoderforge) or zoo name."),
    out: Path = typer.Argument(..., help="Output directory."),
    to: Format = typer.Option(Format.ours, help="ours = encoderforge format; hf = Hugging Face BertModel directory."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Convert a checkpoint between Hugging Face BERT and encoderforge formats."""
    from encoderforge.recipes.convert import convert as run

    with fail_on_error():
        path = run(src, out, to=to.value, overwrite=overwrite)
    typer.echo(f"wrote {to.value} checkpoint to {path}")


@app.command()
def neighbors(
    texts: Path = typer.Argument(..., help="The text file that was embedded."),
    vectors: Path = typer.Argument(..., help="The .npy file written by `encoderforge embed`."),
) -> None:
    """Print each text's nearest other text by cosine similarity."""
    from encoderforge.inference.neighbors import nearest_neighbors

    with fail_on_error():
        rows = nearest_neighbors(texts, vectors)
    for r in rows:
        typer.echo(f"{r.cosine:.3f}  {r.text[:60]!r}\n       -> {r.neighbor[:60]!r}")


app.add_typer(cli_finetune.finetune_app, name="finetune")
app.command("predict")(cli_finetune.predict)
app.command("eval")(cli_finetune.eval_runs)
app.command("compress")(cli_compress.compress)
app.command("run")(cli_run.run)
app.command("report")(cli_run.report)
app.command("quickstart")(cli_run.quickstart)
app.command("init")(cli_run.init)
app.command("serve")(cli_serve.serve)
app.command("search")(cli_search.search)
app.add_typer(cli_index.app, name="index")
app.command("eval-retrieval")(cli_index.eval_retrieval)


def positive(**values: int) -> None:
    """Range-check integer options before any work: `--threads -2` is a one-line error naming the flag."""
    for name, v in values.items():
        if v < 1:
            raise EncoderforgeError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


bench_app = typer.Typer(
    help="Speed benchmarks against transformers and ONNX Runtime, as ratios in one run.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("infer")
def bench_infer(
    model: str = typer.Option("minilm-l6", help="Hugging Face BERT directory or zoo name (all runners load it)."),
    sets: str = typer.Option("short,medium,long256,long512", help="Comma-separated text sets."),
    n: int = typer.Option(2048, help="Number of short texts (other sets scale to about the same token count)."),
    threads: int = typer.Option(2, help="Intra-op threads for every runner."),
    repeats: int = typer.Option(3, help="Timed rounds per runner; medians are reported."),
    max_tokens: int = typer.Option(2048, help="encoderforge token budget per forward pass."),
    onnx: bool = typer.Option(True, help="Include ONNX Runtime fp32/int8 runners."),
    out: Path = typer.Option(Path("runs/bench-infer"), help="Directory for results.json/.md/.png."),
) -> None:
    """Inference throughput: encoderforge fp32/int8/bf16/auto vs transformers SDPA (arrival, sorted) vs ONNX Runtime,
    each with the precision and kernel it ran and its % of this CPU's GEMM peak for that precision."""
    from encoderforge.recipes.bench_infer import bench_infer as run

    with fail_on_error():
        positive(threads=threads, repeats=repeats, max_tokens=max_tokens, n=n)
        check_output(out, [model], expect="dir")
        run(
            model,
            sets=[s.strip() for s in sets.split(",") if s.strip()],
            n=n,
            threads=threads,
            repeats=repeats,
            max_tokens=max_tokens,
            onnx=onnx,
            out=out,
        )
    typer.echo(f"wrote {out}/results.json, results.md, results.png")


bench_app.command("serve")(cli_serve.bench_serve)


@bench_app.command("train")
def bench_train(
    shards: Path = typer.Option(
        None,
        help="Shards from `encoderforge data prepare` (default: the bundled license texts, prepared into a temporary directory).",
    ),
    tokenizer: str = typer.Option("minilm-l6", help="Tokenizer the shards were made with (file, directory or zoo name)."),
    preset: str = typer.Option("minilm-l6", help="Architecture of both models (random init)."),
    max_len: int = typer.Option(128, help="Tokens per packed row."),
    rows: int = typer.Option(8, help="Rows per optimizer step."),
    steps: int = typer.Option(10, help="Timed steps per implementation (medians are reported)."),
    warmup: int = typer.Option(2, help="Untimed steps per implementation first."),
    threads: int = typer.Option(2, help="Intra-op threads."),
    precision: str = typer.Option(
        "fp32",
        help="fp32, or bf16: our step and a second transformers arm under bf16 autocast (the CPU needs AVX512-BF16 or AMX).",
    ),
    out: Path = typer.Option(Path("runs/bench-train"), help="Directory for results.json and results.md."),
) -> None:
    """Training-step throughput: our packed sparse MLM vs transformers BertForMaskedLM + its MLM collator."""
    from encoderforge.recipes.bench_train import bench_train as run
    from encoderforge.recipes.bench_train import write

    with fail_on_error():
        positive(threads=threads, steps=steps, rows=rows, max_len=max_len)
        check_output(out, [shards], expect="dir")
        res = run(
            shards,
            tokenizer,
            preset_name=preset,
            max_len=max_len,
            rows=rows,
            steps=steps,
            warmup=warmup,
            threads=threads,
            precision=precision,  # type: ignore[arg-type]  # checked by the recipe: one line naming --precision
        )
        write(res, out)
    typer.echo(
        f"ours {res['ours']['tokens_per_s']:,.0f} real tokens/s, transformers {res['hf']['tokens_per_s']:,.0f}: "
        f"{res['speedup']:.2f}x (transformers batches {res['padding_share_hf']:.1%} padding; our GEMMs: "
        f"{res['config']['linear_kernel']} on {res['config']['cpu']}); wrote {out}/results.json, results.md"
    )
    if "hf_bf16" in res:
        typer.echo(
            f"with bf16 autocast: {res['speedup']:.2f}x transformers fp32, {res['speedup_vs_hf_bf16']:.2f}x transformers bf16"
        )


def main() -> None:
    """The console entry point: user errors are one line and exit 1; only a real bug shows a traceback, with a line
    asking to report it."""
    try:
        app()
    except EncoderforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume where it can", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if type(e).__module__.startswith("torch.distributed"):  # a peer died or is unreachable: not a bug of ours
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(
                f"error: distributed training: {first}; check that every node started, reaches the rendezvous "
                "endpoint and uses the same --rdzv_id (docs/scale-out.md)",
                file=sys.stderr,
            )
            sys.exit(1)
        traceback.print_exc()
        print(
            "this is a bug in encoderforge, not in your input: please report it with the command you ran and the traceback above",
            file=sys.stderr,
        )
        sys.exit(70)


if __name__ == "__main__":
    main()
