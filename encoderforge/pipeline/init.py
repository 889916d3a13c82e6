"""`encoderforge init`: write a pipeline YAML for the user's own labelled files (the template of
examples/own-data.yaml, filled in), after reading the files the way fine-tuning will, so that a bad file fails here
with its line number instead of minutes into a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, read_dataset
from encoderforge.fileio import atomic_file, check_output

Task = Literal["auto", "classify", "multilabel"]

TEMPLATE = """\
# Written by `encoderforge init` for {train} ({examples} examples, {n_labels} labels, task {task}).
# Run it:    encoderforge run {out} --out runs/{stem}
# Override:  --set finetune.train.lr=1e-4 --set bench=false ; every key: examples/legal-quickstart.yaml
{adapt}finetune:                       # the fine-tuning recipe's keys (configs/finetune-{task}.yaml)
  task: {task}
  model: {model}
  data:
    train: {train_q}
    dev: {dev_q}                   # null: a held-out tenth of train
    test: {test_q}
    text_field: [{text_field}]
    label_field: {label_field}
  finetune: {{epochs: 3, max_length: 128}}
  train: {{batch_rows: 16, lr: 1.0e-4, seed: 0, save_every: 50}}
compress: {{method: int8}}
evaluate: {{tfidf: true, extra_seeds: [1, 2]}}   # the verdict compares TF-IDF with the encoder's seed range
# index: {{corpus: docs.jsonl, queries: queries.jsonl, qrels: qrels.tsv}}   # search your documents with the model
bench: {{texts: 128, latency_texts: 16, rounds: 3, threads: 2}}
export: {{hf: true, onnx: false}}
report: {{title: "{title}"}}
"""

ADAPT = """\
adapt:                          # continued MLM on your unlabelled domain text before fine-tuning
  text: {text}
  head_steps: 100
  steps: 150
"""


def detect_task(train: Path, label_field: str, sep: str = "|") -> Literal["classify", "multilabel"]:
    """multilabel when a label is a JSON list (JSONL) or a `sep`-joined cell (CSV/TSV), else classify."""
    if train.suffix.lower() == ".jsonl":
        for n, line in enumerate(train.read_text(encoding="utf-8", errors="replace").splitlines()[:500], 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise EncoderforgeError(f"{train}:{n}: not valid JSON; fix the line (one object per line)") from None
            if isinstance(obj, dict) and isinstance(obj.get(label_field), list):
                return "multilabel"
        return "classify"
    ds = read_dataset(train, Schema(label_field=label_field))
    return "multilabel" if any(sep in str(ex.label) for ex in ds.examples) else "classify"


def write_init(
    out: str | Path,
    train: str | Path,
    *,
    test: str | Path | None = None,
    dev: str | Path | None = None,
    task: Task = "auto",
    text_field: str = "text",
    label_field: str = "label",
    model: str = "minilm-l6",
    adapt_text: str | Path | None = None,
) -> Path:
    """Read the files as fine-tuning will (errors name file:line), write the pipeline YAML atomically, and load
    it back through the pipeline's own validation. Never replaces an existing file."""
    out, train = Path(out), Path(train)
    if out.exists():
        raise EncoderforgeError(f"{out}: already exists; encoderforge init never replaces a file — choose another --out")
    files = [Path(f) for f in (train, dev, test) if f]
    check_output(out, [*files, *([adapt_text] if adapt_text else [])], flag="--out", expect="file")
    for f in files:
        if not f.is_file():
            raise EncoderforgeError(f"{f}: no such file; pass your labelled .csv, .tsv or .jsonl file")
    if adapt_text and not Path(adapt_text).exists():
        raise EncoderforgeError(f"--adapt-text {adapt_text}: no such file or directory; name your unlabelled domain text")
    kind = detect_task(train, label_field) if task == "auto" else task
    schema = Schema(
        text_fields=(text_field,), label_field=label_field, label_type="multilabel" if kind == "multilabel" else "class"
    )
    ds = read_dataset(train, schema)
    for f in files[1:]:
        read_dataset(f, schema)
    # paths as given when the YAML sits where it is run from, else absolute (a run reads them from its cwd)
    here = out.parent.resolve() == Path.cwd().resolve()

    def q(p: str | Path | None) -> str:  # YAML accepts JSON strings
        return "null" if p is None else json.dumps(str(p if here else Path(p).resolve()))

    text = TEMPLATE.format(
        train=train,
        examples=len(ds),
        n_labels=len(ds.label_set()),
        task=kind,
        out=out,
        stem=out.stem,
        adapt=ADAPT.format(text=q(adapt_text)) if adapt_text else "",
        model=model,
        train_q=q(train),
        dev_q=q(dev),
        test_q=q(test),
        text_field=json.dumps(text_field),
        label_field=json.dumps(label_field),
        title=f"{train.stem}: {kind}",
    )
    if not test:  # evaluate scores the test file; without one, the run fine-tunes and benchmarks only
        text = text.replace("evaluate: {tfidf: true, extra_seeds: [1, 2]}", "evaluate: false  # needs data.test")
        text = text.replace("compress: {method: int8}", "compress: false  # scored on data.test")
        text = text.replace("bench: {texts: 128, latency_texts: 16, rounds: 3, threads: 2}", "bench: false  # times data.test")
    from encoderforge.pipeline.config import load_pipeline

    with atomic_file(out, encoding="utf-8") as f:
        f.write(text)
    try:
        load_pipeline(out)
    except EncoderforgeError:
        out.unlink()
        raise
    return out
