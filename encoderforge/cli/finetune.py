"""CLI: `encoderforge finetune classify|multilabel|ner|regress|qa`, `encoderforge predict`, `encoderforge eval` (thin maps to
encoderforge.recipes.finetune.finetune, encoderforge.recipes.predict.predict_file and encoderforge.eval.leaderboard.leaderboard).

The main app registers them with:
    app.add_typer(cli_finetune.finetune_app, name="finetune")
    app.command("predict")(cli_finetune.predict)
    app.command("eval")(cli_finetune.eval_runs)
`app` below bundles the three for testing and for `python -m encoderforge.cli.finetune`.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from encoderforge.cli.common import fail_on_error

finetune_app = typer.Typer(help="Fine-tune an encoder on labelled data (CSV/TSV/JSONL/Orange .tab/CoNLL).",
                           no_args_is_help=True)
app = typer.Typer(help="Fine-tuning, prediction and leaderboards.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(finetune_app, name="finetune")


class Pooling(str, Enum):
    mean = "mean"
    cls = "cls"


class ChunkPooling(str, Enum):
    mean = "mean"
    max = "max"


class ClassWeight(str, Enum):
    none = "none"
    balanced = "balanced"


def _run(task: str, model: str, train: Path, dev: Optional[Path], test: Optional[Path], out: Path, text_field: List[str],
         label_field: str, labels: Optional[str], label_sep: str, overwrite: bool, **kw) -> None:
    from encoderforge.data.readers import Schema
    from encoderforge.recipes.finetune import FinetuneArgs, finetune

    label_type = {"classify": "class", "multilabel": "multilabel", "ner": "tags", "regress": "float", "qa": "span"}[task]
    with fail_on_error():
        schema = Schema(text_fields=tuple(text_field), label_field=label_field, label_type=label_type,  # type: ignore[arg-type]
                        labels=tuple(x.strip() for x in labels.split(",") if x.strip()) if labels else None, label_sep=label_sep)
        kw = {k: (v.value if isinstance(v, Enum) else v) for k, v in kw.items()}
        result = finetune(task, model, train, dev, test, out=out, schema=schema, args=FinetuneArgs(**kw),  # type: ignore[arg-type]
                          overwrite=overwrite)
    m = result.metrics
    if not m:  # a torchrun worker other than rank 0: rank 0 evaluates, writes the run and prints the summary
        return
    summary = {split: {k: v for k, v in m[split].items() if isinstance(v, (int, float))} for split in ("dev", "test") if split in m}
    typer.echo(json.dumps({"run": str(result.run_dir), **summary, "epochs_run": m["epochs_run"],
                           "s_per_epoch": m["s_per_epoch"], "peak_rss_mb": m["peak_rss_mb"]}, indent=2))


# Options shared by every task (Typer reads them from each command's signature).
MODEL = typer.Option("minilm-l6", "--model", help="Checkpoint directory (encoderforge or HF BERT) or zoo name.")
TRAIN = typer.Option(..., "--train", help="Training file: .csv, .tsv, .jsonl, .tab (Orange) or CoNLL.")
DEV = typer.Option(None, "--dev", help="Dev file (best checkpoint, early stopping); default: a held-out share of train.")
TEST = typer.Option(None, "--test", help="Test file, scored once with the best checkpoint.")
OUT = typer.Option(..., "--out", "-o", help="Run directory to write.")
LABEL_FIELD = typer.Option("label", "--label-field", help="Column/field with the label.")
LABELS = typer.Option(None, "--labels", help="Comma-separated allowed labels (unknown ones are errors).")
LABEL_SEP = typer.Option("|", "--label-sep", help="Separator of multi-label cells in CSV/TSV/.tab files.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a finished run directory.")
MAX_LENGTH = typer.Option(128, "--max-length", help="Tokens per window including [CLS]/[SEP].")
EPOCHS = typer.Option(3.0, "--epochs", help="Passes over the training set.")
BATCH = typer.Option(32, "--batch-size", help="Examples per optimizer step.")
MICRO = typer.Option(0, "--micro-batch", help="Examples per forward pass (0 = batch size; smaller = accumulation).")
LR = typer.Option(5e-5, "--lr", help="Peak learning rate (linear warmup, then linear decay).")
WARMUP = typer.Option(0.1, "--warmup-ratio", help="Share of steps spent warming up.")
WD = typer.Option(0.01, "--weight-decay", help="AdamW weight decay on matrices.")
LR_DECAY = typer.Option(1.0, "--lr-decay", help="Layer-wise LR decay per layer below the head (1 = off).")
FREEZE = typer.Option(0, "--freeze-layers", help="Freeze embeddings + this many lowest layers.")
REINIT = typer.Option(0, "--reinit-layers", help="Re-initialise this many top layers.")
LORA_RANK = typer.Option(0, "--lora-rank", help="Train LoRA adapters of this rank on the frozen encoder (0 = off).")
LORA_ALPHA = typer.Option(16.0, "--lora-alpha", help="LoRA scale numerator (update scaled by alpha / rank).")
PATIENCE = typer.Option(0, "--patience", help="Stop after this many evaluations without dev improvement (0 = off).")
EVALS = typer.Option(1, "--evals-per-epoch", help="Dev evaluations per epoch.")
SEED = typer.Option(0, "--seed", help="Seed for initialisation, data order and dropout.")
THREADS = typer.Option(0, "--threads", help="Torch threads (0 = default).")
DEV_FRACTION = typer.Option(0.1, "--dev-fraction", help="Held-out share of train when no --dev is given.")


@finetune_app.command("classify")
def classify(model: str = MODEL, train: Path = TRAIN, dev: Optional[Path] = DEV, test: Optional[Path] = TEST, out: Path = OUT,
             text_field: List[str] = typer.Option(["text"], "--text-field", help="Text column (repeat for sentence pairs)."),
             label_field: str = LABEL_FIELD, labels: Optional[str] = LABELS, overwrite: bool = OVERWRITE,
             max_length: int = MAX_LENGTH, epochs: float = EPOCHS, batch_size: int = BATCH, micro_batch: int = MICRO,
             lr: float = LR, warmup_ratio: float = WARMUP, weight_decay: float = WD, lr_decay: float = LR_DECAY,
             freeze_layers: int = FREEZE, reinit_layers: int = REINIT,
        lora_rank: int = LORA_RANK, lora_alpha: float = LORA_ALPHA, patience: int = PATIENCE, evals_per_epoch: int = EVALS,
             pooling: Pooling = typer.Option(Pooling.mean, help="Window vector: mean of tokens or [CLS]."),
             max_chunks: int = typer.Option(1, "--max-chunks", help="Windows per long document (1 = truncate)."),
             stride: int = typer.Option(64, "--stride", help="Overlap of consecutive windows in tokens."),
             chunk_pooling: ChunkPooling = typer.Option(ChunkPooling.mean, help="Pool window logits by mean or max."),
             class_weight: ClassWeight = typer.Option(ClassWeight.none, help="'balanced' = inverse class frequency."),
             dev_fraction: float = DEV_FRACTION, seed: int = SEED, threads: int = THREADS) -> None:
    """Single-label classification (accuracy, macro-F1); long documents by chunk-and-pool."""
    _run("classify", model, train, dev, test, out, text_field, label_field, labels, "|", overwrite, max_length=max_length,
         epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr, warmup_ratio=warmup_ratio,
         weight_decay=weight_decay, lr_decay=lr_decay, freeze_layers=freeze_layers, reinit_layers=reinit_layers,
         lora_rank=lora_rank, lora_alpha=lora_alpha,
         patience=patience, evals_per_epoch=evals_per_epoch, pooling=pooling, max_chunks=max_chunks, stride=stride,
         chunk_pooling=chunk_pooling, class_weight=class_weight, dev_fraction=dev_fraction, seed=seed, threads=threads)


@finetune_app.command("multilabel")
def multilabel(model: str = MODEL, train: Path = TRAIN, dev: Optional[Path] = DEV, test: Optional[Path] = TEST, out: Path = OUT,
               text_field: List[str] = typer.Option(["text"], "--text-field", help="Text column."),
               label_field: str = LABEL_FIELD, labels: Optional[str] = LABELS, label_sep: str = LABEL_SEP,
               overwrite: bool = OVERWRITE, max_length: int = MAX_LENGTH, epochs: float = EPOCHS, batch_size: int = BATCH,
               micro_batch: int = MICRO, lr: float = LR, warmup_ratio: float = WARMUP, weight_decay: float = WD,
               lr_decay: float = LR_DECAY, freeze_layers: int = FREEZE, reinit_layers: int = REINIT,
        lora_rank: int = LORA_RANK, lora_alpha: float = LORA_ALPHA,
               patience: int = PATIENCE, evals_per_epoch: int = EVALS,
               pooling: Pooling = typer.Option(Pooling.mean, help="Window vector: mean of tokens or [CLS]."),
               max_chunks: int = typer.Option(1, "--max-chunks", help="Windows per long document (1 = truncate)."),
               stride: int = typer.Option(64, "--stride", help="Overlap of consecutive windows in tokens."),
               chunk_pooling: ChunkPooling = typer.Option(ChunkPooling.mean, help="Pool window logits by mean or max."),
               dev_fraction: float = DEV_FRACTION, seed: int = SEED, threads: int = THREADS) -> None:
    """Multi-label classification (BCE; per-label thresholds tuned on dev; micro/macro F1, exact match)."""
    _run("multilabel", model, train, dev, test, out, text_field, label_field, labels, label_sep, overwrite,
         max_length=max_length, epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr,
         warmup_ratio=warmup_ratio, weight_decay=weight_decay, lr_decay=lr_decay, freeze_layers=freeze_layers,
         reinit_layers=reinit_layers,
         lora_rank=lora_rank, lora_alpha=lora_alpha, patience=patience, evals_per_epoch=evals_per_epoch, pooling=pooling,
         max_chunks=max_chunks, stride=stride, chunk_pooling=chunk_pooling, dev_fraction=dev_fraction, seed=seed,
         threads=threads)


@finetune_app.command("ner")
def ner(model: str = MODEL, train: Path = TRAIN, dev: Optional[Path] = DEV, test: Optional[Path] = TEST, out: Path = OUT,
        labels: Optional[str] = LABELS, overwrite: bool = OVERWRITE, max_length: int = MAX_LENGTH, epochs: float = EPOCHS,
        batch_size: int = BATCH, micro_batch: int = MICRO, lr: float = LR, warmup_ratio: float = WARMUP,
        weight_decay: float = WD, lr_decay: float = LR_DECAY, freeze_layers: int = FREEZE, reinit_layers: int = REINIT,
        lora_rank: int = LORA_RANK, lora_alpha: float = LORA_ALPHA,
        patience: int = PATIENCE, evals_per_epoch: int = EVALS, dev_fraction: float = DEV_FRACTION, seed: int = SEED,
        threads: int = THREADS) -> None:
    """Token classification with BIO tags (CoNLL `token<TAB>tag` or JSONL {"tokens", "tags"}); seqeval entity F1."""
    _run("ner", model, train, dev, test, out, ["text"], "label", labels, "|", overwrite, max_length=max_length,
         epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr, warmup_ratio=warmup_ratio,
         weight_decay=weight_decay, lr_decay=lr_decay, freeze_layers=freeze_layers, reinit_layers=reinit_layers,
         lora_rank=lora_rank, lora_alpha=lora_alpha,
         patience=patience, evals_per_epoch=evals_per_epoch, dev_fraction=dev_fraction, seed=seed, threads=threads)


@finetune_app.command("regress")
def regress(model: str = MODEL, train: Path = TRAIN, dev: Optional[Path] = DEV, test: Optional[Path] = TEST, out: Path = OUT,
            text_field: List[str] = typer.Option(["text"], "--text-field", help="Text column (repeat for sentence pairs)."),
            label_field: str = LABEL_FIELD, overwrite: bool = OVERWRITE, max_length: int = MAX_LENGTH,
            epochs: float = EPOCHS, batch_size: int = BATCH, micro_batch: int = MICRO, lr: float = LR,
            warmup_ratio: float = WARMUP, weight_decay: float = WD, lr_decay: float = LR_DECAY,
            freeze_layers: int = FREEZE, reinit_layers: int = REINIT,
        lora_rank: int = LORA_RANK, lora_alpha: float = LORA_ALPHA, patience: int = PATIENCE,
            evals_per_epoch: int = EVALS,
            pooling: Pooling = typer.Option(Pooling.mean, help="Window vector: mean of tokens or [CLS]."),
            dev_fraction: float = DEV_FRACTION, seed: int = SEED, threads: int = THREADS) -> None:
    """Regression on a text or a sentence pair (MSE; Pearson, Spearman); predict reads pairs as `a<TAB>b`."""
    _run("regress", model, train, dev, test, out, text_field, label_field, None, "|", overwrite, max_length=max_length,
         epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr, warmup_ratio=warmup_ratio,
         weight_decay=weight_decay, lr_decay=lr_decay, freeze_layers=freeze_layers, reinit_layers=reinit_layers,
         lora_rank=lora_rank, lora_alpha=lora_alpha,
         patience=patience, evals_per_epoch=evals_per_epoch, pooling=pooling, dev_fraction=dev_fraction, seed=seed,
         threads=threads)


@finetune_app.command("qa")
def qa(model: str = MODEL, train: Path = TRAIN, dev: Optional[Path] = DEV, test: Optional[Path] = TEST, out: Path = OUT,
       overwrite: bool = OVERWRITE, max_length: int = typer.Option(256, "--max-length", help="Tokens per window."),
       stride: int = typer.Option(64, "--stride", help="Overlap of consecutive context windows (doc stride)."),
       epochs: float = EPOCHS, batch_size: int = BATCH, micro_batch: int = MICRO, lr: float = LR,
       warmup_ratio: float = WARMUP, weight_decay: float = WD, lr_decay: float = LR_DECAY, freeze_layers: int = FREEZE,
       reinit_layers: int = REINIT,
        lora_rank: int = LORA_RANK, lora_alpha: float = LORA_ALPHA, patience: int = PATIENCE, evals_per_epoch: int = EVALS,
       dev_fraction: float = DEV_FRACTION, seed: int = SEED, threads: int = THREADS) -> None:
    """Extractive QA on SQuAD-style JSONL {question, context, answers: [{text, start}]}; EM and F1.
    Predict reads `question<TAB>context` lines."""
    _run("qa", model, train, dev, test, out, ["question", "context"], "answers", None, "|", overwrite,
         max_length=max_length, stride=stride, epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr,
         warmup_ratio=warmup_ratio, weight_decay=weight_decay, lr_decay=lr_decay, freeze_layers=freeze_layers,
         reinit_layers=reinit_layers,
         lora_rank=lora_rank, lora_alpha=lora_alpha, patience=patience, evals_per_epoch=evals_per_epoch, dev_fraction=dev_fraction,
         seed=seed, threads=threads)


@app.command("predict")
def predict(run: Path = typer.Argument(..., help="Run directory written by `encoderforge finetune`."),
            input: str = typer.Argument("-", help="UTF-8 text file, one text per line ('-' = stdin)."),
            out: Path = typer.Option(..., "--out", "-o", help="Predictions as JSONL ({text, label/labels/tags, ...})."),
            max_tokens: int = typer.Option(2048, help="Token budget per forward pass (the Engine's default).")) -> None:
    """Predict with a fine-tuned run through the padding-free inference engine."""
    from encoderforge.recipes.predict import predict_file

    with fail_on_error():
        n = predict_file(run, input, out, max_tokens=max_tokens)
    typer.echo(f"wrote {n} predictions to {out}")


@app.command("eval")
def eval_runs(runs: List[Path] = typer.Argument(..., help="Run directories (or folders holding them)."),
              out: Path = typer.Option(Path("leaderboard"), "--out", "-o", help="Writes OUT.md and OUT.json.")) -> None:
    """Leaderboard (Markdown + JSON) of fine-tuned runs: dev/test metrics, epochs, seconds per epoch, peak RSS."""
    from encoderforge.eval.leaderboard import leaderboard

    with fail_on_error():
        board = leaderboard(runs, out)
    typer.echo(board.markdown)


if __name__ == "__main__":
    app()
