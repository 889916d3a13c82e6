"""Token classification (NER) with BIO/IOB2 tags: encoder -> TokenClassifier -> cross-entropy on the first
word piece of each word (later pieces are ignored, as in BERT's CoNLL setup); entity-level P/R/F1 with seqeval
(from the `eval` extra, imported where it is used, so training and prediction code loads without it).

The loop's evaluation sums entity true/false positives over batches (micro P/R/F1 = seqeval's default), and the
final evaluation runs seqeval itself on whole predicted tag sequences (plus its per-type report).
Shapes: S sentences, N real word pieces of all sentences back to back, C hidden, L tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError, require
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import TokenClassifier
from encoderforge.tasks import LossSum
from encoderforge.tasks.sequences import epoch_steps, fixed_batches, truncation
from encoderforge.tasks.spec import HiddenStates, Meta, Rows, TaskArgs, TaskSpec, batching

IGNORE = -100


@dataclass
class TokBatch:
    input_ids: torch.Tensor  # (N,) int64, sentences back to back
    lengths: torch.Tensor  # (S,) int64
    labels: torch.Tensor  # (N,) int64 tag id on first word pieces, IGNORE elsewhere
    first: list[list[int]] | None = None  # evaluation only: each word's first piece per sentence
    gold: list[list[str]] | None = None  # evaluation only: gold word tags, for entity counts

    def to(self, device: torch.device | str) -> "TokBatch":
        input_ids, lengths, labels = (t.to(device, non_blocking=True) for t in (self.input_ids, self.lengths, self.labels))
        return TokBatch(input_ids, lengths, labels, first=self.first, gold=self.gold)


@dataclass
class EncodedWords:
    ids: list[list[int]]  # [CLS] pieces [SEP] per sentence
    first: list[list[int]]  # per sentence: position of each word's first piece (-1 if truncated away)
    truncated: int  # sentences that lost words to max_length


class TokenModel(nn.Module):
    """Encoder + TokenClassifier on the packed tokens: (N,) ids -> (N, L) logits (no padding anywhere)."""

    def __init__(self, encoder: Encoder, num_labels: int):
        super().__init__()
        self.encoder = encoder.for_task_heads()
        self.head = TokenClassifier(encoder.cfg, num_labels)

    def forward(self, batch: TokBatch) -> torch.Tensor:
        hidden = self.encoder.forward_packed(batch.input_ids, batch.lengths).hidden  # (N, C)
        return self.head(hidden)  # (N, L)


def check_bio(tags: Sequence[str], where: str = "tags") -> None:
    """IOB2 tags only: "O", "B-TYPE" or "I-TYPE"."""
    for t in tags:
        if t != "O" and not (len(t) > 2 and t[:2] in ("B-", "I-")):
            raise EncoderforgeError(f"{where}: tag {t!r} is not BIO/IOB2 (use O, B-TYPE, I-TYPE)")


def encode_words(tok: Tokenizer, sentences: Sequence[Sequence[str]], max_length: int) -> EncodedWords:
    """Word lists -> [CLS] pieces [SEP] (truncated at max_length) and the first piece of every word."""
    with truncation(tok, max_length):
        encs = tok.encode_batch([list(s) for s in sentences], is_pretokenized=True)
    ids, first, truncated = [], [], 0
    for words, enc in zip(sentences, encs):
        pos = [-1] * len(words)
        for i, w in enumerate(enc.word_ids):
            if w is not None and pos[w] < 0:
                pos[w] = i
        truncated += -1 in pos
        ids.append(enc.ids)
        first.append(pos)
    return EncodedWords(ids, first, truncated)


def decode(logits: np.ndarray, first: Sequence[int], tags: Sequence[str]) -> list[str]:
    """(T, L) logits of one sentence -> one tag per word (words cut by truncation get "O")."""
    return [tags[int(logits[p].argmax())] if p >= 0 else "O" for p in first]


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in a BIO tag sequence (seqeval's extraction)."""
    return require("seqeval.metrics.sequence_labeling", "eval").get_entities(list(tags))


def entity_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> tuple[int, int, int]:
    """Entity-level true positives, predicted and gold entity counts (seqeval's entity extraction)."""
    tp = n_pred = n_gold = 0
    for g, p in zip(gold, pred):
        ge, pe = set(entities(g)), set(entities(p))
        tp, n_pred, n_gold = tp + len(ge & pe), n_pred + len(pe), n_gold + len(ge)
    return tp, n_pred, n_gold


class NERTask:
    """Token classification for the training loop.

    Args:
        tokenizer: the encoder's tokenizer (its pre-tokenizer splits words further; the first piece is labelled).
        labels: tag names ("O", "B-person", "I-person", ...).
        train / dev: (tokens, tags) lists.
        max_length, batch_rows, micro_rows, seed, rank, world: as ClassificationTask.
    """

    primary = "f1"

    def __init__(
        self,
        tokenizer: Tokenizer,
        labels: Sequence[str],
        train: Sequence,
        dev: Sequence,
        *,
        max_length: int = 128,
        batch_rows: int = 32,
        micro_rows: int = 0,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.tok, self.labels = tokenizer, list(labels)
        check_bio(self.labels, "labels")
        self.index = {t: i for i, t in enumerate(self.labels)}
        self.max_length, self.batch_rows, self.micro_rows = max_length, batch_rows, micro_rows
        self.seed, self.rank, self.world = seed, rank, world
        self.train_rows, self.dev_rows = list(train), list(dev)
        self.train_enc = encode_words(tokenizer, [r[0] for r in self.train_rows], max_length)
        self.dev_enc = encode_words(tokenizer, [r[0] for r in self.dev_rows], max_length)

    def _batch(self, enc: EncodedWords, rows: Sequence | None, idx: Sequence[int]) -> TokBatch:
        labels = []
        for i in idx:
            lab = [IGNORE] * len(enc.ids[i])
            for w, p in enumerate(enc.first[i]):
                if p >= 0 and rows is not None:
                    lab[p] = self.index[rows[i][1][w]]
            labels.extend(lab)
        flat = torch.tensor([t for i in idx for t in enc.ids[i]], dtype=torch.long)
        lengths = torch.tensor([len(enc.ids[i]) for i in idx], dtype=torch.long)
        return TokBatch(flat, lengths, torch.tensor(labels, dtype=torch.long))

    def train_batches(self, start_step: int) -> Iterator[list[TokBatch]]:
        for micro in epoch_steps(
            len(self.train_rows), self.batch_rows, self.micro_rows, self.seed, start_step, rank=self.rank, world=self.world
        ):
            yield [self._batch(self.train_enc, self.train_rows, idx) for idx in micro]

    def eval_batches(self) -> Iterator[TokBatch]:
        for idx in fixed_batches(len(self.dev_rows), max(self.batch_rows, 32), rank=self.rank, world=self.world):
            yield self._dev_batch(idx)

    def _dev_batch(self, idx: list[int]) -> TokBatch:
        batch = self._batch(self.dev_enc, self.dev_rows, idx)
        batch.first, batch.gold = [self.dev_enc.first[i] for i in idx], [list(self.dev_rows[i][1]) for i in idx]
        return batch

    def loss(self, model: nn.Module, batch: TokBatch) -> LossSum:
        logits = model(batch).float()  # (N, L)
        keep = batch.labels != IGNORE
        total = F.cross_entropy(logits[keep], batch.labels[keep], reduction="sum")
        stats = {"correct": float((logits[keep].argmax(-1) == batch.labels[keep]).sum())}
        if batch.gold is not None and batch.first is not None:  # evaluation: entity counts on decoded word tags
            pred = self._decode(logits.detach().cpu().numpy(), batch.lengths.tolist(), batch.first)
            stats["tp"], stats["n_pred"], stats["n_gold"] = map(float, entity_counts(batch.gold, pred))
        return LossSum(total=total, count=int(keep.sum()), tokens=int(batch.input_ids.numel()), stats=stats)

    def _decode(self, logits: np.ndarray, lengths: list[int], first: list[list[int]]) -> list[list[str]]:
        out, start = [], 0
        for n, pos in zip(lengths, first):
            out.append(decode(logits[start : start + n], pos, self.labels))
            start += n
        return out

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        tp, n_pred, n_gold = sums.get("tp", 0.0), sums.get("n_pred", 0.0), sums.get("n_gold", 0.0)
        p, r = tp / max(n_pred, 1e-12), tp / max(n_gold, 1e-12)
        return {
            "loss": sums["loss"] / sums["count"],
            "token_accuracy": sums.get("correct", 0.0) / sums["count"],
            "precision": p,
            "recall": r,
            "f1": 2 * p * r / max(p + r, 1e-12),
        }

    @torch.no_grad()
    def predict_tags(self, model: nn.Module, sentences: Sequence[Sequence[str]]) -> tuple[list[list[str]], int]:
        """Word tag sequences for word lists, in order; also how many sentences were truncated."""
        model.eval()
        enc = encode_words(self.tok, sentences, self.max_length)
        device = next(model.parameters()).device
        out: list[list[str]] = []
        for idx in fixed_batches(len(sentences), max(self.batch_rows, 32)):
            batch = self._batch(enc, None, idx)
            logits = model(batch.to(device)).float().cpu().numpy()
            out.extend(self._decode(logits, batch.lengths.tolist(), [enc.first[i] for i in idx]))
        return out, enc.truncated

    def evaluate(self, model: nn.Module, rows: Sequence) -> dict[str, object]:
        """seqeval entity P/R/F1 (micro, default conlleval-style matching) and the per-type report."""
        sq = require("seqeval.metrics", "eval")
        pred, truncated = self.predict_tags(model, [r[0] for r in rows])
        gold = [list(r[1]) for r in rows]
        report = sq.classification_report(gold, pred, output_dict=True, zero_division=0)
        per_type = {
            k: {m: round(float(v[m]), 4) for m in ("precision", "recall", "f1-score", "support")}
            for k, v in report.items()
            if "avg" not in k
        }
        return {
            "precision": float(sq.precision_score(gold, pred, zero_division=0)),
            "recall": float(sq.recall_score(gold, pred, zero_division=0)),
            "f1": float(sq.f1_score(gold, pred, zero_division=0)),
            "per_type": per_type,
            "n": len(rows),
            "truncated": truncated,
        }


# ---- fine-tuning and prediction glue ----------------------------------------------------------------------------


def _build_task(
    tok: Tokenizer, labels: list[str], train: Rows, dev: Rows, args: TaskArgs, *, rank: int = 0, world: int = 1
) -> NERTask:
    return NERTask(tok, labels, train, dev, **batching(args, rank, world))


@torch.inference_mode()
def _predict(engine: HiddenStates, head: nn.Module, meta: Meta, texts: Sequence[str]) -> list[dict]:
    """Whitespace-split words -> tags through the Engine's padding-free forward -> entities with word spans."""
    sentences = [t.split() for t in texts]
    enc = encode_words(engine.tokenizer, sentences, meta["max_length"])
    tags: list[list[str]] = [[] for _ in sentences]
    for b in engine.forward_batches(enc.ids):
        logits = head(b.hidden).float().numpy()  # (B, T, L)
        for row, i in enumerate(b.index):
            tags[i] = decode(logits[row], enc.first[i], meta["labels"])
    return [
        {
            "tokens": words,
            "tags": t,
            "entities": [
                {"type": typ, "start": s, "end": e + 1, "text": " ".join(words[s : e + 1])} for typ, s, e in entities(t)
            ],
        }
        for words, t in zip(sentences, tags)
    ]


SPEC = TaskSpec(
    kind="ner",
    label_type="tags",
    primary=NERTask.primary,
    build_model=lambda enc, labels, a: TokenModel(enc, len(labels)),
    build_task=_build_task,
    task_json=lambda a: {"max_length": a.finetune.max_length},
    build_head=lambda cfg, meta: TokenClassifier(cfg, len(meta["labels"])),
    predict=_predict,
)
