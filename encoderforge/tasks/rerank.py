"""Cross-encoder re-ranker training, listwise: each training row is one query's group of candidates, its relevant
document and its hard negatives, every (query, document) pair one window `[CLS] q [SEP] d [SEP]` scored by a pooled
head with one output; the loss is the softmax cross-entropy of the relevant document against the group's negatives.

Why listwise and not `classify` on 0/1 pairs: a re-ranker only has to order one query's candidates, and the
candidates it will see are the first-stage retriever's top hits. Gao et al. 2021 ("Rethink Training of BERT Rerankers
in Multi-Stage Retrieval Pipeline", LCE) found that a group softmax over negatives *mined from that retriever* beats
pointwise 0/1 training on BM25 negatives; encoderforge's own 0/1 re-rankers ranked below their first stage on all three
retrieval sets (docs/results.md, issue 17). Mine the negatives with `encoderforge index mine --sample-depth 20
--found-only`: drawn from the candidate lists the re-ranker will re-order, and only from lists that hold the positive
(a weak first stage's best-ranked negatives alone taught it to prefer the least similar candidate).

Rows are the embedding pairs JSONL {"query", "positive", "negatives": [...]}; groups may differ in size (the loss pads
with -inf). Dev metric: MRR of the relevant document within its group (primary) and accuracy@1.
Prediction reads `query<TAB>document` lines and returns {"score": logit} (higher = more relevant).
Shapes: G groups in a batch, D (query, document) pairs, M the largest group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Dataset, text_key
from encoderforge.tasks import LossSum, pooled
from encoderforge.tasks.pooled import DocBatches
from encoderforge.tasks.sequences import Encoded, SeqBatch, epoch_steps, fixed_batches, make_batch, windows_by_doc
from encoderforge.tasks.spec import HiddenStates, Meta, Rows, TaskArgs, TaskSpec, batching


@dataclass
class GroupBatch:
    """The (query, document) windows of G groups, relevant document first in each group."""

    seq: SeqBatch
    sizes: torch.Tensor  # (G,) pairs per group

    def to(self, device: torch.device | str) -> "GroupBatch":
        return GroupBatch(self.seq.to(device), self.sizes.to(device))


def group_scores(scores: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """(D,) pair scores, groups back to back -> (G, M) with -inf past each group's end."""
    g = torch.repeat_interleave(torch.arange(len(sizes), device=scores.device), sizes)  # (D,)
    starts = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(len(scores), device=scores.device) - starts[g]
    grid = scores.new_full((len(sizes), int(sizes.max())), float("-inf"))
    grid[g, pos] = scores
    return grid


def listwise_loss(grid: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed softmax cross-entropy of column 0 (the relevant document) over each row of a (G, M) score grid, and
    the summed ranking stats: reciprocal rank of the relevant document (ties count against it) and top-1 hits."""
    total = F.cross_entropy(grid, torch.zeros(len(grid), dtype=torch.long, device=grid.device), reduction="sum")
    rank = (grid[:, 1:] >= grid[:, :1]).sum(1).double()  # (G,) candidates scored at least as high as the relevant one
    return total, {"rr": float((1 / (1 + rank)).sum()), "top1": float((rank == 0).sum())}


def _group(texts: Sequence[str], raw: object, where: str) -> tuple[str, list[str]]:
    """((query, positive), negatives) -> (query, [positive, *negatives]), checked; `where` names the row in errors.
    A negative that is the positive again (or repeats another) is dropped: two equal inputs with opposite targets
    only teach noise."""
    negs, seen = raw, {text_key(texts[1])}
    if isinstance(raw, list):
        negs = []
        for n in raw:
            if text_key(n) not in seen:
                seen.add(text_key(n))
                negs.append(n)
    if not isinstance(negs, list) or not negs:
        got = "a score" if not isinstance(negs, list) else "none besides copies of the positive" if raw else "none"
        raise EncoderforgeError(
            f"{where}: hard negatives are {got}; a re-ranker learns to order a query's candidates: give "
            '{"query", "positive", "negatives": [...]} rows (mine them with `encoderforge index mine`)'
        )
    return texts[0], [texts[1], *negs]


def _groups(rows: Rows, what: str) -> list[tuple[str, list[str]]]:
    return [_group(texts, raw, f"rerank {what} row {i + 1}") for i, (texts, raw) in enumerate(rows)]


def check_examples(ds: Dataset) -> None:
    """Fail on the first row a re-ranker cannot train on, naming its file and line (before any model loads)."""
    for ex in ds.examples:
        _group(ex.texts, ex.label, ex.where)


class RerankTask:
    """Listwise cross-encoder fine-tuning for the training loop (module docstring).

    Args:
        tokenizer, train / dev: ((query, positive), negatives list) rows; max_length (of the pair window),
        batch_rows (groups per optimizer step), micro_rows, seed, rank, world: as ClassificationTask.
    """

    primary = "mrr"

    def __init__(
        self,
        tokenizer: Tokenizer,
        train: Rows,
        dev: Rows,
        *,
        max_length: int = 256,
        batch_rows: int = 16,
        micro_rows: int = 0,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.docs = DocBatches(tokenizer, max_length, 1, 64, batch_rows, micro_rows, seed, rank, world)
        self.train_enc, self.train_sizes = self.encode(_groups(train, "train"))
        self.dev_enc, self.dev_sizes = self.encode(_groups(dev, "dev"))

    def encode(self, groups: Sequence[tuple[str, list[str]]]) -> tuple[Encoded, list[int]]:
        pairs = [((q, d), None) for q, docs in groups for d in docs]
        return self.docs.encode(pairs), [len(docs) for _, docs in groups]

    def _batches(self, enc: Encoded, sizes: list[int], order: Iterable[list[int]]) -> Iterator[GroupBatch]:
        by_doc, starts = windows_by_doc(enc), np.cumsum([0, *sizes])
        dummy = torch.zeros(enc.num_docs)  # targets: the relevant document is each group's first
        for groups in order:
            docs = [d for g in groups for d in range(starts[g], starts[g + 1])]
            yield GroupBatch(make_batch(enc, by_doc, docs, dummy), torch.tensor([sizes[g] for g in groups]))

    def train_batches(self, start_step: int) -> Iterator[list[GroupBatch]]:
        d = self.docs
        for micro in epoch_steps(
            len(self.train_sizes), d.batch_rows, d.micro_rows, d.seed, start_step, rank=d.rank, world=d.world
        ):
            yield list(self._batches(self.train_enc, self.train_sizes, micro))

    def eval_batches(self) -> Iterator[GroupBatch]:
        d = self.docs
        return self._batches(
            self.dev_enc, self.dev_sizes, fixed_batches(len(self.dev_sizes), d.batch_rows, rank=d.rank, world=d.world)
        )

    def loss(self, model: nn.Module, batch: GroupBatch) -> LossSum:
        scores = model(batch.seq).float()[:, 0]  # (D,)
        total, stats = listwise_loss(group_scores(scores, batch.sizes))
        return LossSum(total=total, count=len(batch.sizes), tokens=int(batch.seq.input_ids.numel()), stats=stats)

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["count"], 1)
        return {"loss": sums["loss"] / n, "mrr": sums.get("rr", 0.0) / n, "accuracy": sums.get("top1", 0.0) / n}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, rows: Rows) -> dict[str, object]:
        model.eval()
        enc, sizes = self.encode(_groups(rows, "evaluation"))
        device = next(model.parameters()).device
        sums = {"loss": 0.0, "count": 0.0}
        for b in self._batches(enc, sizes, fixed_batches(len(sizes), self.docs.batch_rows)):
            s = self.loss(model, b.to(device))
            sums["loss"] += float(s.total)
            sums["count"] += s.count
            for k, v in s.stats.items():
                sums[k] = sums.get(k, 0.0) + v
        return {**self.metrics(sums), "n": len(sizes), "truncated": enc.truncated}


# ---- fine-tuning and prediction glue ----------------------------------------------------------------------------


def _build_task(
    tok: Tokenizer, labels: list[str], train: Rows, dev: Rows, args: TaskArgs, *, rank: int = 0, world: int = 1
) -> RerankTask:
    return RerankTask(tok, train, dev, **batching(args, rank, world))


def _predict(engine: HiddenStates, head: nn.Module, meta: Meta, texts: Sequence[str]) -> list[dict]:
    """One `query<TAB>document` pair per line -> {"score": the relevance logit}."""
    scores = pooled.document_logits(engine, head, meta, texts)[:, 0]
    return [{"score": round(float(s), 5)} for s in scores]


SPEC = TaskSpec(
    kind="rerank",
    label_type="pairs",
    primary=RerankTask.primary,
    build_model=lambda enc, labels, a: pooled.build_model(enc, 1, a),
    build_task=_build_task,
    task_json=lambda args: {**pooled.task_json(args), "max_chunks": 1, "text_fields": 2},
    build_head=lambda cfg, meta: pooled.build_head(cfg, 1, meta),
    predict=_predict,
    check_examples=check_examples,
)
