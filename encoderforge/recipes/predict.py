"""`encoderforge predict RUN texts.txt`: a fine-tuned run directory + texts -> predictions (JSONL), served by the
padding-free inference Engine (token-budget batches, unpadded forward) with the task's head on top."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_file
from encoderforge.inference.engine import DEFAULT_MAX_TOKENS, Engine
from encoderforge.inference.precision import Precision
from encoderforge.inference.textio import read_lines
from encoderforge.model import checkpoint
from encoderforge.tasks.registry import TASKS
from encoderforge.tokenization import load_tokenizer


@dataclass
class Predictor:
    """A loaded run: the engine (encoder + tokenizer), the task head and task.json.

    Example:
        >>> p = Predictor.load("runs/r8")
        >>> p.predict(["oil prices rose sharply"])[0]["label"]
        'crude'
    """

    engine: Engine
    head: nn.Module
    meta: dict

    @classmethod
    def load(cls, run_dir: str | Path, *, max_tokens: int = DEFAULT_MAX_TOKENS, precision: Precision = "fp32") -> "Predictor":
        """`precision`: the engine's GEMM precision (`Engine`: fp32, or bf16 / auto on CPUs with native bf16)."""
        run = Path(run_dir)
        meta_file = run / "task.json"
        if not meta_file.exists():
            raise EncoderforgeError(f"{meta_file}: missing; pass a run directory written by `encoderforge finetune`")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        spec = TASKS.get(meta.get("kind", ""))
        if spec is None:
            raise EncoderforgeError(f"{meta_file}: unknown task kind {meta.get('kind')!r}; expected one of {sorted(TASKS)}")
        loaded = checkpoint.load(run / "model")
        state = {k[len("head.") :]: v for k, v in loaded.extra.items() if k.startswith("head.")}
        head = spec.build_head(loaded.encoder.cfg, meta)
        if not state and any(True for _ in head.state_dict()):  # (an embedding run's pooling head has no tensors)
            raise EncoderforgeError(
                f"{run / 'model'}: the checkpoint holds no task head (head.* tensors); it is not a fine-tuned model"
            )
        head = spec.load_head(loaded.encoder.cfg, meta, state)
        engine = Engine(
            loaded.encoder,
            load_tokenizer(run / "model"),
            max_tokens=max(max_tokens, meta["max_length"]),
            max_length=meta["max_length"],
            precision=precision,
        )
        if meta.get("rotation"):  # an `index rotate` run: its vectors are rotated before the cut (index/embedder.py)
            from encoderforge.index.embedder import run_rotation

            meta = {**meta, "rotation_matrix": run_rotation(run, meta, loaded.encoder.cfg.hidden_size)[0]}
        return cls(engine=engine, head=head, meta=meta)

    def predict(self, texts: Sequence[str]) -> list[dict]:
        """One dict per text, in input order: {"label", "score", "scores"} (classify), {"labels", "scores"}
        (multilabel), {"tokens", "tags", "entities"} (ner; texts split on whitespace), {"value"} (regress) or
        {"answer", "start", "end"} (qa). Pair and QA models read `text a<TAB>text b` / `question<TAB>context`."""
        if not texts:
            return []
        return TASKS[self.meta["kind"]].predict(self.engine, self.head, self.meta, texts)


@dataclass
class Predicted:
    count: int
    precision: str  # what ran: "fp32" or "bf16"
    kernel: str  # what ran the linear layers
    note: str = ""  # why a requested precision or kernel was not used ("" when it was)


def predict_file(
    run_dir: str | Path,
    input: str | Path,
    out: str | Path,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    precision: Precision = "fp32",
) -> Predicted:
    """Predict every non-empty line of `input` ('-' = stdin) and write JSONL ({"text", ...prediction}) to `out`.
    `precision`: the engine's GEMM precision (fp32; bf16 or auto on CPUs with native bf16, fidelity-gated).

    Returns:
        how many predictions were written, and the precision and kernel that made them.
    """
    texts = [t for t in read_lines(input) if t.strip()]
    if not texts:
        raise EncoderforgeError(f"{input}: no non-empty lines to predict")
    predictor = Predictor.load(run_dir, max_tokens=max_tokens, precision=precision)
    preds = predictor.predict(texts)
    with atomic_file(out, "w", encoding="utf-8") as f:
        for text, p in zip(texts, preds):
            f.write(json.dumps({"text": text, **p}, ensure_ascii=False) + "\n")
    eng = predictor.engine
    note = "; ".join(eng.notes)
    return Predicted(len(preds), eng.precision, eng.kernel, note)
