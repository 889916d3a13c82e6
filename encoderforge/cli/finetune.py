"""CLI: `encoderforge finetune classify|multilabel|ner|regress|qa|embed`, `encoderforge predict`, `encoderforge eval` (thin maps to
encoderforge.recipes.finetune.finetune, encoderforge.recipes.predict.predict_file and encoderforge.eval.leaderboard.leaderboard).

The main app registers them with:
    app.add_typer(cli_finetune.finetune_app, name="finetune")
    app.command("predict")(cli_finetune.predict)
    app.command("eval")(cli_finetune.eval_runs)
`app` below bundles the three for testing and for `python -m encoderforge.cli.finetune`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import List, Optional

import typer

from encoderforge import EncoderforgeError
from encoderforge.cli.common import fail_on_error
from encoderforge.cli.options import CONFIG, SET, config_flags, param, with_config_flags
from encoderforge.recipes.finetune_config import DERIVED, EmbedArgs, FinetuneConfig

finetune_app = typer.Typer(help="Fine-tune an encoder on labelled data (CSV/TSV/JSONL/Orange .tab/CoNLL).", no_args_is_help=True)
app = typer.Typer(help="Fine-tuning, prediction and leaderboards.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(finetune_app, name="finetune")


# Flags users already type, kept as aliases of the config keys they set.
ALIASES = {"train.out_dir": ("--out", "-o"), "train.batch_rows": ("--batch-size",), "train.micro_rows": ("--micro-batch",)}
# `task` is the subcommand; the loop's fields that fine-tuning derives (finetune_config.DERIVED) get no flag.
SKIP = {"task", "train.resume", "train.lr", *(f"train.{k}" for k in DERIVED)}
TASK_HELP = {
    "classify": "Single-label classification (accuracy, macro-F1); a text or a sentence pair; long documents by chunk-and-pool.",
    "multilabel": "Multi-label classification (BCE; per-label thresholds tuned on dev; micro/macro F1, exact match).",
    "ner": 'Token classification with BIO tags (CoNLL `token<TAB>tag` or JSONL {"tokens", "tags"}); seqeval entity F1.',
    "regress": "Regression on a text or a sentence pair (MSE; Pearson, Spearman); predict reads pairs as `a<TAB>b`.",
    "qa": "Extractive QA on SQuAD-style JSONL {question, context, answers: [{text, start}]}; EM and F1. Predict "
    "reads `question<TAB>context` lines.",
    "embed": 'Embeddings (bi-encoder) from JSONL {"query", "positive", "negatives": [...]} (in-batch + hard negatives, '
    'MNRL) or {"query", "positive", "negatives": score} (CoSENT); dev nDCG@10 / MRR@10 retrieval; Matryoshka dims.',
    "colbert": "ColBERT late interaction (per-token vectors, MaxSim; in-batch + hard negatives) from the embed pairs JSONL.",
    "rerank": "Cross-encoder re-ranker, listwise: each embed-pairs row's positive against its hard negatives (mine them "
    "with `encoderforge index mine`); dev MRR. Predict reads `query<TAB>document` lines.",
}
OVERWRITE = param(
    "overwrite", bool, typer.Option(False, "--overwrite", help="Replace a finished run directory (only one encoderforge wrote).")
)
PRINT = param("print_config", bool, typer.Option(False, "--print-config", help="Print the resolved config and exit."))
LR = param(
    "lr",
    Optional[str],
    typer.Option(
        None,
        "--lr",
        help="Peak learning rate, or `auto`: chosen per task by a learning-rate range test on the training data, "
        "recorded with its curve in the run's config.json (train.lr; default: 1e-4 classify and multilabel, 2e-4 ner, 5e-5 otherwise).",
        show_default=False,
    ),
)


def lr_value(text: Optional[str]) -> str | float | None:
    """--lr: a positive number or `auto`."""
    if text is None or text.strip().lower() == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise EncoderforgeError(f"--lr {text!r}: give a positive number such as 5e-5, or auto")
    return value


EMBED_KEYS = {f"embed.{f.name}" for f in dataclasses.fields(EmbedArgs)}  # flags of `finetune embed` only


def _register(task: str) -> None:
    flags = config_flags(FinetuneConfig, skip=SKIP | (set() if task == "embed" else EMBED_KEYS), aliases=ALIASES)

    @with_config_flags(flags, [CONFIG, SET, OVERWRITE, PRINT, LR])
    def command(
        values: dict, config: Optional[Path], set_: List[str], overwrite: bool, print_config: bool, lr: Optional[str]
    ) -> None:
        with fail_on_error():
            values = {**values, "train.lr": lr_value(lr)}
        _run(task, config, set_, values, overwrite, print_config)

    command.__doc__ = TASK_HELP[task] + " Every flag is also a config key: --config FILE, --set key=value."
    finetune_app.command(task)(command)


def _run(task: str, config: Optional[Path], set_: List[str], values: dict, overwrite: bool, print_config: bool) -> None:
    from encoderforge.config import to_dict
    from encoderforge.recipes.finetune import finetune
    from encoderforge.recipes.finetune_config import finetune_config

    with fail_on_error():
        cfg = finetune_config(task, config, set_, values=values)
        if print_config:
            typer.echo(json.dumps(to_dict(cfg), indent=2))
            return
        result = finetune(cfg, overwrite=overwrite)
    m = result.metrics
    if not m:  # a torchrun worker other than rank 0: rank 0 evaluates, writes the run and prints the summary
        return
    if result.skipped:
        typer.echo(
            f"{result.run_dir}: already finished with this config and these files; nothing to do (--overwrite retrains)", err=True
        )
    summary = {
        split: {k: v for k, v in m[split].items() if isinstance(v, (int, float))} for split in ("dev", "test") if split in m
    }
    typer.echo(
        json.dumps(
            {
                "run": str(result.run_dir),
                **summary,
                "epochs_run": m["epochs_run"],
                "s_per_epoch": m["s_per_epoch"],
                "peak_rss_mb": m["peak_rss_mb"],
            },
            indent=2,
        )
    )


for _task in TASK_HELP:
    _register(_task)


@app.command("predict")
def predict(
    run: Path = typer.Argument(..., help="Run directory written by `encoderforge finetune`."),
    input: str = typer.Argument("-", help="UTF-8 text file, one text per line ('-' = stdin)."),
    out: Path = typer.Option(..., "--out", "-o", help="Predictions as JSONL ({text, label/labels/tags, ...})."),
    max_tokens: int = typer.Option(2048, help="Token budget per forward pass (the Engine's default)."),
    precision: str = typer.Option(
        "fp32",
        help="GEMM precision on CPU: fp32; bf16 (needs AVX512-BF16 or AMX; kept only if the sample embeddings stay "
        "within cosine 0.999 of fp32); auto (bf16 where the CPU has it and it measures faster).",
    ),
) -> None:
    """Predict with a fine-tuned run through the padding-free inference engine."""
    from encoderforge import EncoderforgeError
    from encoderforge.fileio import check_output
    from encoderforge.recipes.predict import predict_file

    with fail_on_error():
        if max_tokens < 1:
            raise EncoderforgeError(f"--max-tokens must be >= 1, got {max_tokens}")
        if (run / "task.json").is_file():  # (a directory that is not a run gets its own error from the recipe)
            check_output(out, [input, run])  # before any compute: never replace the input or write into the run
        check_output(out, [input])
        r = predict_file(run, input, out, max_tokens=max_tokens, precision=precision)  # type: ignore[arg-type]  # the Engine names a bad value
    typer.echo(f"wrote {r.count} predictions to {out} ({r.precision}, {r.kernel} linears)")
    if r.note:
        typer.echo(f"note: {r.note}", err=True)


@app.command("eval")
def eval_runs(
    runs: List[Path] = typer.Argument(..., help="Run directories (or folders holding them)."),
    out: Path = typer.Option(Path("leaderboard"), "--out", "-o", help="Writes OUT.md and OUT.json."),
) -> None:
    """Leaderboard (Markdown + JSON) of fine-tuned runs: dev/test metrics, epochs, seconds per epoch, peak RSS."""
    from encoderforge.eval.leaderboard import leaderboard

    with fail_on_error():
        board = leaderboard(runs, out)
    typer.echo(board.markdown)


if __name__ == "__main__":
    app()
