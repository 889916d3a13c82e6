"""`encoderforge tokenizer ...`: train, extend and compare WordPiece tokenizers (one library call each)."""

from __future__ import annotations

from pathlib import Path

import typer

from encoderforge.cli.common import fail_on_error

app = typer.Typer(
    help="Train a domain WordPiece tokenizer, extend a model's vocabulary, compare tokenizers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def train(
    files: list[Path] = typer.Argument(..., help="UTF-8 corpus files (a directory stands for the files in it)."),
    vocab_size: int = typer.Option(..., "--vocab-size", help="Vocabulary size, special tokens included (e.g. 30522)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: tokenizer.json, vocab.txt, tokenizer_config.json."),
    cased: bool = typer.Option(False, "--cased", help="Keep case and accents (default: uncased, like bert-base-uncased)."),
    min_frequency: int = typer.Option(2, "--min-frequency", help="A pair must occur this often to be merged."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Train a BERT-compatible WordPiece tokenizer ([PAD]=0, [CLS] x [SEP]) on domain text."""
    from encoderforge.tokenization.train import train_wordpiece_dir

    with fail_on_error():
        tok = train_wordpiece_dir(
            files, out, vocab_size=vocab_size, lowercase=not cased, min_frequency=min_frequency, overwrite=overwrite
        )
    typer.echo(f"wrote {out}: WordPiece vocabulary of {tok.get_vocab_size():,} tokens")


@app.command()
def extend(
    model: Path = typer.Option(
        ..., "--model", help="Checkpoint directory (encoderforge or Hugging Face BERT) with its tokenizer."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output encoderforge checkpoint directory."),
    terms: Path | None = typer.Option(None, "--terms", help="UTF-8 file, one word per line ('#' starts a comment)."),
    from_corpus: list[Path] | None = typer.Option(
        None,
        "--from-corpus",
        help="Corpus files or directories: add their "
        "most frequent words that split into >= 3 pieces. Takes a shell "
        "glob (--from-corpus corpus/*.txt) or repeats.",
    ),
    more_corpus: list[Path] | None = typer.Argument(
        None,
        metavar="CORPUS_FILE",
        show_default=False,
        help="The rest of --from-corpus's files (a shell glob expands to several).",
    ),
    top: int = typer.Option(200, "--top", help="How many words to take with --from-corpus."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Add domain words to the vocabulary; each new embedding row = mean of its old sub-token rows."""
    from encoderforge import EncoderforgeError
    from encoderforge.tokenization.extend import extend_checkpoint

    with fail_on_error():
        if more_corpus and not from_corpus:  # click can't give an option a variable number of values
            raise EncoderforgeError(
                f"unexpected file {str(more_corpus[0])!r}; corpus files go after --from-corpus (e.g. --from-corpus corpus/*.txt)"
            )
        corpus = [*(from_corpus or []), *(more_corpus or [])]
        added = extend_checkpoint(model, out, terms_file=terms, corpus=corpus, top=top, overwrite=overwrite)
    shown = ", ".join(a.term for a in added[:10]) + (", ..." if len(added) > 10 else "")
    typer.echo(f"added {len(added)} words (ids {added[0].id}..{added[-1].id}): {shown}; wrote {out}")


@app.command()
def stats(
    files: list[Path] = typer.Argument(..., help="UTF-8 text files to measure on (ideally held out from training)."),
    a: Path = typer.Option(..., "--a", help="Baseline tokenizer: checkpoint dir, tokenizer.json or vocab.txt."),
    b: Path = typer.Option(..., "--b", help="Tokenizer to compare against the baseline."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the numbers as JSON here."),
) -> None:
    """Tokens per word, unknown rate and words split for two tokenizers; % fewer tokens of b vs a."""
    from encoderforge.fileio import check_output
    from encoderforge.tokenization.stats import tokenizer_stats

    with fail_on_error():
        if json_out is not None:  # before measuring: never a directory, never one of the inputs
            check_output(json_out, [*files, a, b], flag="--json", expect="file")
        report = tokenizer_stats(files, a, b)
        if json_out is not None:
            report.write_json(json_out)
    typer.echo(report.to_markdown())


if __name__ == "__main__":
    app()
