"""Extractive QA (SQuAD style): `[CLS] question [SEP] context [SEP]` windows -> SpanHead start/end logits ->
the best context span; exact match and token F1 (the SQuAD v1.1 evaluation's normalisation).

Long contexts become several windows that overlap by `stride` tokens (the "doc stride" of BERT's run_squad: the
Rust tokenizer's overflowing encodings with their character offsets). A window that does not contain the answer
is trained to point at [CLS]. At decoding, every window of an example proposes its best span of at most
`max_answer_tokens` tokens inside the context; the highest start + end score wins, mapped back to characters.
Token types are all 0 (as for pairs, see tasks.sequences): the Engine serves single segments.
Shapes: E examples, S windows, N real tokens, T longest window.
"""

from __future__ import annotations

import collections
import re
import string
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import SpanHead, SpanLogits
from encoderforge.model.padding import pad_packed
from encoderforge.tasks import LossSum
from encoderforge.tasks.sequences import (
    epoch_steps,
    fixed_batches,
    split_pairs,
    truncation,
)
from encoderforge.tasks.spec import HiddenStates, Meta, Rows, TaskArgs, TaskSpec, batching

Answer = tuple[str, int]  # (text, start character)


@dataclass
class Windows:
    """Token windows of E (question, context) examples."""

    ids: list[list[int]]
    example: list[int]  # (S,) example of each window
    offsets: list[list[tuple[int, int]]]  # per window: character span of each token in the context
    in_context: list[list[bool]]  # per window: token belongs to the context
    start: list[int]  # gold start token (0 = [CLS]: answer not in this window)
    end: list[int]
    by_example: list[list[int]]


def encode_qa(tok: Tokenizer, rows: Sequence[tuple[tuple[str, str], list[Answer]]], max_length: int, stride: int) -> Windows:
    """Tokenize (question, context) pairs into overlapping windows and locate each gold answer in token space.

    Questions are cut to half the window (run_squad's max_query_length), so every window keeps at least
    max_length / 2 - 3 context tokens and the doc stride must be below that.
    """
    max_query = max_length // 2
    if not 0 <= stride < max_length - max_query - 3:
        raise EncoderforgeError(
            f"--stride={stride} must be below {max_length - max_query - 3} (half of --max-length="
            f"{max_length} is kept for the context, minus 3 special tokens); lower --stride"
        )
    questions = [q for (q, _), _ in rows]
    with truncation(tok):
        for i, enc in enumerate(tok.encode_batch(questions, add_special_tokens=False)):
            if len(enc.ids) > max_query:
                questions[i] = questions[i][: enc.offsets[max_query - 1][1]]
    with truncation(tok, max_length, stride=stride, strategy="only_second"):
        encs = tok.encode_batch([(q, c) for q, ((_, c), _) in zip(questions, rows)])
    w = Windows([], [], [], [], [], [], [[] for _ in rows])
    for i, (enc, (_, answers)) in enumerate(zip(encs, rows)):
        for win in [enc, *enc.overflowing]:
            ctx = [s == 1 for s in win.sequence_ids]
            s_tok = e_tok = 0
            if answers:
                a_text, a_start = answers[0]
                a_end = a_start + len(a_text)
                toks = [j for j, (o, c) in enumerate(zip(win.offsets, ctx)) if c and o[0] < a_end and o[1] > a_start]
                first_ctx = next((j for j, c in enumerate(ctx) if c), None)
                last_ctx = max((j for j, c in enumerate(ctx) if c), default=None)
                # the answer counts only if the window holds all of it
                if (
                    toks
                    and first_ctx is not None
                    and last_ctx is not None  # both None together (no context token)
                    and win.offsets[first_ctx][0] <= a_start
                    and win.offsets[last_ctx][1] >= a_end
                ):
                    s_tok, e_tok = toks[0], toks[-1]
            w.by_example[i].append(len(w.ids))
            w.ids.append(win.ids)
            w.example.append(i)
            w.offsets.append(win.offsets)
            w.in_context.append(ctx)
            w.start.append(s_tok)
            w.end.append(e_tok)
    return w


def best_span(
    starts: Sequence[np.ndarray],
    ends: Sequence[np.ndarray],
    in_context: Sequence[Sequence[bool]],
    max_answer_tokens: int,
    top: int = 20,
) -> tuple[int, int, int]:
    """(window, start token, end token) with the highest start + end score over an example's windows, the span
    inside the context and at most `max_answer_tokens` long."""
    best, arg = -np.inf, (0, 0, 0)
    for w, (s, e, ctx) in enumerate(zip(starts, ends, in_context)):
        ok = np.asarray(ctx[: len(s)], dtype=bool)
        s_idx = [i for i in np.argsort(-s)[: top * 2] if ok[i]][:top]
        e_idx = [i for i in np.argsort(-e)[: top * 2] if ok[i]][:top]
        for i in s_idx:
            for j in e_idx:
                if i <= j < i + max_answer_tokens and s[i] + e[j] > best:
                    best, arg = s[i] + e[j], (w, int(i), int(j))
    return arg


def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lower case, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def em_f1(pred: str, golds: Sequence[str]) -> tuple[float, float]:
    """Exact match and token F1 against the best-matching gold answer (0/0 when there is no gold answer)."""
    if not golds:
        return 0.0, 0.0
    p = normalize_answer(pred).split()
    em = max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
    f1 = 0.0
    for g in golds:
        gt = normalize_answer(g).split()
        common = sum((collections.Counter(p) & collections.Counter(gt)).values())
        if common:
            prec, rec = common / len(p), common / len(gt)
            f1 = max(f1, 2 * prec * rec / (prec + rec))
    return em, f1


@dataclass
class QABatch:
    input_ids: torch.Tensor  # (N,)
    lengths: torch.Tensor  # (S,)
    start: torch.Tensor  # (S,) gold start token per window
    end: torch.Tensor  # (S,)
    examples: list[int] | None = None  # evaluation: the examples whose windows (all of them) are in this batch

    def to(self, device: torch.device | str) -> "QABatch":
        input_ids, lengths, start, end = (
            x.to(device, non_blocking=True) for x in (self.input_ids, self.lengths, self.start, self.end)
        )
        return QABatch(input_ids, lengths, start, end, examples=self.examples)


class SpanModel(nn.Module):
    """Encoder + SpanHead on packed windows: returns start and end logits (S, T), padding masked out."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder.for_task_heads()
        self.head = SpanHead(encoder.cfg)

    def forward(self, batch: QABatch) -> SpanLogits:
        out = self.encoder.forward_packed(batch.input_ids, batch.lengths)  # (N, C)
        grid = pad_packed(out.hidden, out.layout)  # (S, T, C), (S, T)
        return self.head(grid.hidden, grid.mask)  # (S, T) each


class QATask:
    """Extractive QA for the training loop.

    Args:
        tokenizer: the encoder's tokenizer.
        train / dev: ((question, context), [(answer text, start char), ...]) lists.
        max_length, stride: window length and overlap (doc stride) in tokens.
        max_answer_tokens: longest span decoded.
        batch_rows, micro_rows, seed, rank, world: as ClassificationTask (rows = examples).
    """

    primary = "f1"

    def __init__(
        self,
        tokenizer: Tokenizer,
        train: Sequence,
        dev: Sequence,
        *,
        max_length: int = 256,
        stride: int = 64,
        max_answer_tokens: int = 30,
        batch_rows: int = 32,
        micro_rows: int = 0,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.tok, self.max_length, self.stride, self.max_answer_tokens = tokenizer, max_length, stride, max_answer_tokens
        self.batch_rows, self.micro_rows, self.seed, self.rank, self.world = batch_rows, micro_rows, seed, rank, world
        self.train_rows, self.dev_rows = list(train), list(dev)
        self.train_w = encode_qa(tokenizer, self.train_rows, max_length, stride)
        self.dev_w = encode_qa(tokenizer, self.dev_rows, max_length, stride)

    def _batch(self, w: Windows, examples: Sequence[int], *, keep: bool = False) -> QABatch:
        wins = [j for i in examples for j in w.by_example[i]]
        flat = torch.tensor([t for j in wins for t in w.ids[j]], dtype=torch.long)
        return QABatch(
            flat,
            torch.tensor([len(w.ids[j]) for j in wins]),
            torch.tensor([w.start[j] for j in wins]),
            torch.tensor([w.end[j] for j in wins]),
            examples=list(examples) if keep else None,
        )

    def train_batches(self, start_step: int) -> Iterator[list[QABatch]]:
        for micro in epoch_steps(
            len(self.train_rows), self.batch_rows, self.micro_rows, self.seed, start_step, rank=self.rank, world=self.world
        ):
            yield [self._batch(self.train_w, ex) for ex in micro]

    def eval_batches(self) -> Iterator[QABatch]:
        for ex in fixed_batches(len(self.dev_rows), max(self.batch_rows, 32), rank=self.rank, world=self.world):
            yield self._batch(self.dev_w, ex, keep=True)

    def loss(self, model: nn.Module, batch: QABatch) -> LossSum:
        out = model(batch)
        start, end = out.start.float(), out.end.float()  # (S, T)
        total = (F.cross_entropy(start, batch.start, reduction="sum") + F.cross_entropy(end, batch.end, reduction="sum")) / 2
        stats: dict[str, float] = {}
        if batch.examples is not None:  # evaluation: decode each example from all of its windows
            answers = self._decode(
                self.dev_w, self.dev_rows, batch.examples, start.detach().cpu().numpy(), end.detach().cpu().numpy()
            )
            scores = [em_f1(a, [g for g, _ in self.dev_rows[i][1]]) for a, i in zip(answers, batch.examples)]
            stats = {"em": sum(s[0] for s in scores), "f1": sum(s[1] for s in scores), "examples": float(len(scores))}
        return LossSum(total=total, count=int(batch.lengths.numel()), tokens=int(batch.input_ids.numel()), stats=stats)

    def _decode(self, w: Windows, rows: Sequence, examples: Sequence[int], start: np.ndarray, end: np.ndarray) -> list[str]:
        """Answers of `examples` from (S, T) window logits laid out example by example, as in _batch."""
        out, row = [], 0
        for i in examples:
            wins = w.by_example[i]
            n = len(wins)
            wi, s, e = best_span(
                [start[row + k] for k in range(n)],
                [end[row + k] for k in range(n)],
                [w.in_context[j] for j in wins],
                self.max_answer_tokens,
            )
            offs, context = w.offsets[wins[wi]], rows[i][0][1]
            out.append(context[offs[s][0] : offs[e][1]])
            row += n
        return out

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("examples", 0.0), 1e-12)
        return {"loss": sums["loss"] / sums["count"], "exact_match": sums.get("em", 0.0) / n, "f1": sums.get("f1", 0.0) / n}

    @torch.no_grad()
    def predict_answers(self, model: nn.Module, rows: Sequence) -> list[str]:
        model.eval()
        w = encode_qa(self.tok, rows, self.max_length, self.stride)
        device = next(model.parameters()).device
        out: list[str] = []
        for ex in fixed_batches(len(rows), max(self.batch_rows, 32)):
            o = model(self._batch(w, ex).to(device))
            out.extend(self._decode(w, rows, ex, o.start.float().cpu().numpy(), o.end.float().cpu().numpy()))
        return out

    def evaluate(self, model: nn.Module, rows: Sequence) -> dict[str, object]:
        """SQuAD v1.1 exact match and F1 (answerable examples)."""
        preds = self.predict_answers(model, rows)
        scores = [em_f1(p, [g for g, _ in r[1]]) for p, r in zip(preds, rows)]
        return {
            "exact_match": float(np.mean([s[0] for s in scores])),
            "f1": float(np.mean([s[1] for s in scores])),
            "n": len(rows),
            "windows": len(encode_qa(self.tok, rows, self.max_length, self.stride).ids),
        }


# ---- fine-tuning and prediction glue ----------------------------------------------------------------------------


def _build_task(
    tok: Tokenizer, labels: list[str], train: Rows, dev: Rows, args: TaskArgs, *, rank: int = 0, world: int = 1
) -> QATask:
    return QATask(tok, train, dev, stride=args.finetune.stride, **batching(args, rank, world))


@torch.inference_mode()
def _predict(engine: HiddenStates, head: nn.Module, meta: Meta, texts: Sequence[str]) -> list[dict]:
    """Lines `question<TAB>context` -> {"answer", "start", "end"} (character offsets in the context)."""
    pairs = [(q, c) for q, c in split_pairs(texts, 2)]  # (question, context): split_pairs(_, 2) gives 2-tuples
    w = encode_qa(engine.tokenizer, [(p, []) for p in pairs], meta["max_length"], meta["stride"])
    start: list[np.ndarray] = [np.zeros(0)] * len(w.ids)
    end: list[np.ndarray] = [np.zeros(0)] * len(w.ids)
    for batch in engine.forward_batches(w.ids):
        logits = head(batch.hidden, batch.mask)  # SpanLogits (B, T)
        for row, j in enumerate(batch.index):
            n = len(w.ids[j])
            start[j], end[j] = logits.start[row, :n].float().numpy(), logits.end[row, :n].float().numpy()
    out = []
    for i, (question, context) in enumerate(pairs):
        wins = w.by_example[i]
        wi, s, e = best_span(
            [start[j] for j in wins], [end[j] for j in wins], [w.in_context[j] for j in wins], meta["max_answer_tokens"]
        )
        a, b = w.offsets[wins[wi]][s][0], w.offsets[wins[wi]][e][1]
        out.append({"answer": context[a:b], "start": a, "end": b})
    return out


SPEC = TaskSpec(
    kind="qa",
    label_type="span",
    primary=QATask.primary,
    build_model=lambda enc, labels, a: SpanModel(enc),
    build_task=_build_task,
    task_json=lambda a: {"max_length": a.finetune.max_length, "stride": a.finetune.stride, "max_answer_tokens": 30},
    build_head=lambda cfg, meta: SpanHead(cfg),
    predict=_predict,
)
