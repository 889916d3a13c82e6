"""CLI: `encoderforge pretrain --config ...` and `encoderforge data prepare ...` (thin maps to library functions).

The main app registers these with `app.add_typer(cli_pretrain.app, name="pretrain")` and
`app.add_typer(cli_pretrain.data_app, name="data")`. For torchrun before that: `torchrun -m encoderforge.cli.pretrain`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from encoderforge.cli.common import fail_on_error

app = typer.Typer(help="Masked-language-model pretraining (from scratch or continued).", no_args_is_help=False)
data_app = typer.Typer(help="Corpus preparation: text -> deduplicated token shards.", no_args_is_help=True)


@app.callback(invoke_without_command=True)
def pretrain(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/pretrain-*.yaml)."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set train.lr=1e-4 (repeatable)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
) -> None:
    """Pretrain with MLM; launch under `torchrun --nproc_per_node K -m encoderforge pretrain ...` for DDP."""
    from encoderforge.config import to_dict
    from encoderforge.recipes.pretrain import load_config
    from encoderforge.recipes.pretrain import pretrain as run

    with fail_on_error():
        cfg = load_config(config, set_)
        if print_config:
            typer.echo(json.dumps(to_dict(cfg), indent=2))
            return
        final = run(cfg)
    typer.echo(json.dumps(final, indent=2))


@data_app.callback()
def data() -> None:
    """Corpus preparation commands."""


@data_app.command("prepare")
def prepare(
    corpus: List[str] = typer.Argument(
        ...,
        help="PATH[=NAME][:WEIGHT]: a text/JSONL file or directory; NAME "
        "(letters, digits, '-', '_', '.') names its shards; WEIGHT "
        "up-samples it (2 = twice per epoch).",
    ),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="tokenizer.json, vocab.txt or a checkpoint directory."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output shard directory (appears only when complete); never inside a corpus directory."
    ),
    split: str = typer.Option("file", help="Documents in text files: 'file', 'paragraph' (blank lines) or 'line'."),
    field: str = typer.Option("text", help="JSONL field holding the text."),
    eval_fraction: float = typer.Option(0.01, help="Share of documents held out for evaluation."),
    min_chars: int = typer.Option(20, help="Drop documents shorter than this after cleaning."),
    shard_tokens: int = typer.Option(1 << 26, help="Maximum tokens per shard file."),
    seed: int = typer.Option(0, help="Salts the held-out split."),
    overwrite: bool = typer.Option(False, help="Replace an existing output made with the same tokenizer."),
) -> None:
    """Clean, exact-deduplicate and tokenize corpora into shards + manifest.json."""
    from encoderforge.data.corpus import parse_corpus_arg, prepare_corpus

    with fail_on_error():
        specs = [parse_corpus_arg(c, split=split, field=field) for c in corpus]  # type: ignore[arg-type]
        manifest = prepare_corpus(
            specs,
            tokenizer,
            out,
            eval_fraction=eval_fraction,
            shard_tokens=shard_tokens,
            min_chars=min_chars,
            seed=seed,
            overwrite=overwrite,
        )
    for c in manifest["corpora"]:
        typer.echo(
            f"{c['name']}: {c['documents']['train']} train / {c['documents']['eval']} eval documents, "
            f"{c['tokens']['train']:,} / {c['tokens']['eval']:,} tokens ({c['duplicates']} duplicates, "
            f"{c['empty']} too short dropped), weight {c['weight']}"
        )


if __name__ == "__main__":
    app()
