"""Embedding fine-tuning (bi-encoder, sentence-transformers style): pairs (query, positive [, hard negatives]) with
the multiple-negatives ranking loss, or graded pairs (a, b, score) with CoSENT; optionally Matryoshka (the loss
summed over truncated widths). The model is the encoder + a parameter-free pooling head: what `index build`, the
Engine and `/v1/embeddings` run unchanged.

Batches keep every text at most once (the no-duplicates sampler of sentence-transformers): a query's positive that
recurs in the batch as another row's positive would otherwise be scored as its negative. Each batch packs the
unique texts of its rows back to back (no padding), runs the encoder once and pools per text.

The loop's dev evaluation is full retrieval over the dev pairs (queries vs every unique dev positive): nDCG@10
(binary gain, the primary), MRR@10, Recall@1/10; for graded pairs Spearman of the cosine vs the gold score.
Shapes: B pairs, K negatives per pair, S unique texts in a batch, N their tokens, C hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.encoder import Encoder
from encoderforge.tasks import LossSum
from encoderforge.tasks.embed_losses import cos_matrix, cosent, gather_rows, matryoshka, mnrl
from encoderforge.tasks.embed_metrics import correlations, ranking_metrics
from encoderforge.tasks.embed_model import EmbedHead, EmbedModel, length_groups, shape_vectors
from encoderforge.tasks.sequences import encode_texts, steps_per_epoch
from encoderforge.tasks.spec import HiddenStates, Meta, Rows, TaskArgs, TaskSpec

# the model lives in embed_model.py, the metrics in embed_metrics.py; other tasks import them from here
__all__ = ["EmbedHead", "EmbedModel", "EmbedTask", "PairBatch", "DevSet", "SPEC", "length_groups"]
__all__ += ["no_duplicate_batches", "correlations", "ranking_metrics", "dev_sums"]
EVAL_ROWS = 64  # texts per forward when embedding a whole dev/test set


@dataclass
class PairBatch:
    """The unique texts of B pairs packed back to back, and where each pair's texts sit among them."""

    input_ids: torch.Tensor  # (N,)
    lengths: torch.Tensor  # (S,)
    query: torch.Tensor  # (B,) row in 0..S-1
    positive: torch.Tensor  # (B,)
    negatives: torch.Tensor  # (K * B,) negative k of pair i at k * B + i (sentence-transformers' column order)
    scores: torch.Tensor  # (B,) graded scores, or (0,) for ranking pairs

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(*(t.to(device) for t in vars(self).values()))


@dataclass
class DevSet:
    """The whole dev set as the loop's one evaluation "batch": embedding and scoring it needs every vector at once."""

    rows: Rows

    def to(self, device: torch.device | str) -> "DevSet":
        return self


def no_duplicate_batches(texts: Sequence[Sequence[int]], batch_rows: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of row indices in which no text id occurs twice (sentence-transformers'
    NoDuplicatesBatchSampler idea): rows are visited in a (seed, epoch) permutation and each goes into the first
    batch (of at most `batch_rows`) that holds none of its texts. There are exactly ceil(n / batch_rows) batches;
    rows that fit none of them (a text repeated in more rows than there are batches) wait for another epoch."""
    n = len(texts)
    per = steps_per_epoch(n, batch_rows)
    batches: list[list[int]] = [[] for _ in range(per)]
    seen: list[set[int]] = [set() for _ in range(per)]
    open_from = 0  # batches before this one are full
    for i in np.random.default_rng([seed, epoch]).permutation(n).tolist():
        for b in range(open_from, per):
            if len(batches[b]) < batch_rows and not seen[b].intersection(texts[i]):
                batches[b].append(i)
                seen[b].update(texts[i])
                break
        while open_from < per and len(batches[open_from]) >= batch_rows:
            open_from += 1
    return batches


class EmbedTask:
    """Bi-encoder fine-tuning for the training loop (module docstring).

    Args:
        tokenizer, train / dev: ((text_a, text_b), negatives list | score) rows; max_length, batch_rows, micro_rows,
        seed, rank, world: as ClassificationTask. loss: "auto" (CoSENT when rows carry scores, else MNRL), "mnrl" or
        "cosent"; scale: the similarity scale (inverse temperature); symmetric: MNRL in both directions;
        dims: Matryoshka widths (empty = off; the full width is always one of them); dim_weights: their loss weights,
        one per `dims` entry (empty = 1 each; the full width weighs 1 unless `dims` lists it).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        train: Rows,
        dev: Rows,
        *,
        max_length: int = 256,
        batch_rows: int = 32,
        micro_rows: int = 0,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        loss: str = "auto",
        scale: float = 20.0,
        symmetric: bool = False,
        dims: Sequence[int] = (),
        dim_weights: Sequence[float] = (),
    ):
        self.tok, self.max_length, self.batch_rows, self.micro_rows = tokenizer, max_length, batch_rows, micro_rows
        self.seed, self.rank, self.world = seed, rank, world
        self.graded = _graded(train)
        if loss == "auto":
            loss = "cosent" if self.graded else "mnrl"
        if (loss == "cosent") != self.graded:
            need = "a number (the similarity score)" if loss == "cosent" else "a list of negatives (or nothing)"
            raise EncoderforgeError(f"embed loss {loss!r} needs every row's negatives/score field to be {need}")
        self.loss_kind, self.scale, self.symmetric, self.dims = loss, scale, symmetric, sorted(set(dims), reverse=True)
        if dim_weights and (len(dim_weights) != len(dims) or len(set(dims)) != len(dims)):
            raise EncoderforgeError(
                f"embed.dim_weights: {len(dim_weights)} weights for the widths {list(dims)}; give distinct widths and "
                "one weight per width, in the same order"
            )
        self.dim_weight = dict(zip(dims, dim_weights))  # width -> Matryoshka loss weight (absent: 1)
        self.primary = "spearman" if self.graded else "ndcg@10"
        self.texts: list[str] = []
        self.text_id: dict[str, int] = {}
        self.train = [self._ids(r) for r in train]
        self.max_negatives = max((len(r[2]) for r in self.train), default=0)
        if world > 1 and micro_rows:
            raise EncoderforgeError(
                "embed under torchrun gathers every process's texts as negatives once per step; set --micro-batch 0"
            )
        self.ids = encode_texts(tokenizer, [(t,) for t in self.texts], max_length).ids  # one window per text
        self.dev = dev
        self._epoch: tuple[int, list[list[int]]] | None = None

    def _ids(self, row: Any) -> tuple[int, int, list[int], float]:
        """(query id, positive id, negative ids, score or NaN) with every distinct text numbered once."""
        (a, b), extra = row
        negs = extra if isinstance(extra, list) else []
        for t in (a, b, *negs):
            if t not in self.text_id:
                self.text_id[t] = len(self.texts)
                self.texts.append(t)
        ids = [self.text_id[t] for t in (a, b, *negs)]
        return ids[0], ids[1], ids[2:], math.nan if isinstance(extra, list) else float(extra)

    # ---- batches --------------------------------------------------------------------------------------------------

    def train_batches(self, start_step: int) -> Iterator[list[PairBatch]]:
        per = steps_per_epoch(len(self.train), self.batch_rows)
        step = start_step
        while True:
            epoch, k = divmod(step, per)
            if self._epoch is None or self._epoch[0] != epoch:
                texts = [(q, p, *n) for q, p, n, _ in self.train]
                self._epoch = (epoch, no_duplicate_batches(texts, self.batch_rows, self.seed, epoch))
            rows = self._epoch[1][k]
            if len(rows) < self.world:  # every process needs a row to join the step's gather: borrow from batch 0
                rows = rows + self._epoch[1][0][: self.world - len(rows)]
            mine = rows[self.rank :: self.world]
            micro = self.micro_rows or len(mine) or 1
            yield [self._batch([self.train[i] for i in mine[j : j + micro]]) for j in range(0, len(mine), micro)]
            step += 1

    def _batch(self, rows: list[tuple[int, int, list[int], float]]) -> PairBatch:
        k = min(len(r[2]) for r in rows) if rows else 0  # a rectangular negatives block: the fewest any row has
        cols = [[r[0] for r in rows], [r[1] for r in rows], *[[r[2][j] for r in rows] for j in range(k)]]
        uniq = list(dict.fromkeys(t for col in cols for t in col))
        where = {t: s for s, t in enumerate(uniq)}
        at = [torch.tensor([where[t] for t in col], dtype=torch.long) for col in cols]
        return PairBatch(
            input_ids=torch.tensor([x for t in uniq for x in self.ids[t]], dtype=torch.long),
            lengths=torch.tensor([len(self.ids[t]) for t in uniq], dtype=torch.long),
            query=at[0],
            positive=at[1],
            negatives=torch.cat(at[2:]) if k else torch.zeros(0, dtype=torch.long),
            scores=torch.tensor([r[3] for r in rows]) if self.graded else torch.zeros(0),
        )

    def eval_batches(self) -> Iterator[DevSet]:
        if self.rank == 0:  # one process scores the whole set; the loop sums over processes
            yield DevSet(self.dev)

    # ---- loss and metrics -----------------------------------------------------------------------------------------

    def batch_loss(
        self,
        emb: torch.Tensor,
        q: torch.Tensor,
        p: torch.Tensor,
        negs: torch.Tensor,
        scores: torch.Tensor,
        *,
        gather: bool = False,
    ) -> torch.Tensor:
        """The mean loss of one batch from (S, C) pooled vectors and the rows of each pair's query, positive and
        negatives (or its score); with Matryoshka dims, summed over them and the full width. `gather`: every
        process's positives, negatives (and queries) join the candidates (training under torchrun)."""

        def at(e: torch.Tensor) -> torch.Tensor:  # (S, d) vectors cut to one width
            if self.loss_kind == "cosent":
                return cosent(e[q], e[p], scores, scale=self.scale)
            if not gather:
                return mnrl(e[q], e[p], e[negs] if negs.numel() else None, scale=self.scale, symmetric=self.symmetric)
            pos, offset = gather_rows(e[p])
            neg = gather_rows(e[negs])[0] if self.max_negatives else None
            every_q = gather_rows(e[q])[0] if self.symmetric else None
            return mnrl(e[q], pos, neg, scale=self.scale, symmetric=self.symmetric, offset=offset, all_queries=every_q)

        def layer_loss(e: torch.Tensor) -> torch.Tensor:  # (S, C) one layer's vectors, at every Matryoshka width
            widths = sorted({e.shape[1], *self.dims}, reverse=True)
            weights = [float(self.dim_weight.get(d, 1.0)) for d in widths]
            return matryoshka(lambda d: at(e[:, :d]), widths, weights) if self.dims else at(e)

        if emb.dim() == 2:
            return layer_loss(emb)
        # 2D Matryoshka (Li et al. 2024): the same loss on every trained layer's vectors, summed (no layer sampling)
        return torch.stack([layer_loss(e) for e in emb.unbind(0)]).sum()

    def loss(self, model: nn.Module, batch: PairBatch | DevSet) -> LossSum:
        if isinstance(batch, DevSet):
            return dev_sums(self.evaluate(model, batch.rows))
        emb = model(batch.input_ids, batch.lengths).float()  # (S, C), or (layers, S, C) for 2D Matryoshka
        b = batch.query.shape[0]
        gather = self.world > 1 and self.loss_kind == "mnrl"  # CoSENT compares pairs within a process's batch
        loss = self.batch_loss(emb, batch.query, batch.positive, batch.negatives, batch.scores, gather=gather)
        return LossSum(total=loss * b, count=b, tokens=int(batch.input_ids.numel()))

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = sums["count"]
        return {"loss": sums["loss"] / n, **{k: v / n for k, v in sums.items() if k not in ("loss", "count")}}

    @torch.no_grad()
    def embed(self, model: nn.Module, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), C) float32 pooled vectors, computed in length-sorted chunks of EVAL_ROWS texts."""
        was_training = model.training
        model.eval()
        ids = encode_texts(self.tok, [(t,) for t in texts], self.max_length).ids
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.zeros(len(ids), cast(Encoder, getattr(model, "encoder", model)).cfg.hidden_size)
        device = next(model.parameters()).device
        for j in range(0, len(order), EVAL_ROWS):
            part = order[j : j + EVAL_ROWS]
            flat = torch.tensor([x for i in part for x in ids[i]], dtype=torch.long, device=device)
            lengths = torch.tensor([len(ids[i]) for i in part], dtype=torch.long, device=device)
            vecs = model(flat, lengths).float()
            out[part] = (vecs[-1] if vecs.dim() == 3 else vecs).cpu()  # the last layer's
        model.train(was_training)
        return out

    def evaluate(self, model: nn.Module, rows: Rows) -> dict[str, object]:
        """Retrieval over the rows' unique positives (ranking pairs) or correlations (graded pairs); with Matryoshka,
        the same at every width ("ndcg@10@96", ...). "loss" is the batch loss over fixed consecutive batches."""
        a_texts = list(dict.fromkeys(r[0][0] for r in rows))
        b_texts = list(dict.fromkeys(r[0][1] for r in rows))
        qa, db = self.embed(model, a_texts), self.embed(model, b_texts)
        ai, bi = {t: i for i, t in enumerate(a_texts)}, {t: i for i, t in enumerate(b_texts)}
        pairs = [(ai[r[0][0]], bi[r[0][1]]) for r in rows]
        out: dict[str, object] = {
            "n": len(a_texts) if not self.graded else len(rows),
            "loss": self._dev_loss(rows, qa, db, ai, bi),
        }
        widths = sorted({qa.shape[1], *self.dims}, reverse=True)
        for d in widths:
            if self.graded:
                cos = F.cosine_similarity(qa[[p[0] for p in pairs], :d], db[[p[1] for p in pairs], :d]).numpy()
                part = correlations(cos, np.array([float(r[1]) for r in rows]))
            else:
                part = ranking_metrics(cos_matrix(qa[:, :d], db[:, :d]), pairs)
            out.update({k if d == widths[0] else f"{k}@{d}": v for k, v in part.items()})
        return out

    def _dev_loss(self, rows: Rows, qa: torch.Tensor, db: torch.Tensor, ai: dict, bi: dict) -> float:
        """Mean training loss over consecutive batches of `batch_rows` dev rows (hard negatives not scored)."""
        total, n = 0.0, 0
        for j in range(0, len(rows), self.batch_rows):
            part = rows[j : j + self.batch_rows]
            if self.graded and len(part) < 2:
                continue
            m = len(part)
            emb = torch.cat([qa[[ai[r[0][0]] for r in part]], db[[bi[r[0][1]] for r in part]]])  # (2m, C)
            scores = torch.tensor([float(r[1]) for r in part]) if self.graded else torch.zeros(0)
            none = torch.zeros(0, dtype=torch.long)
            total += float(self.batch_loss(emb, torch.arange(m), torch.arange(m, 2 * m), none, scores)) * m
            n += len(part)
        return total / max(n, 1)


def dev_sums(scores: dict[str, object]) -> LossSum:
    """A whole-dev-set evaluation as the loop's summed stats (mean x n, so the loop's division gives them back)."""
    n = int(scores["n"])  # type: ignore[call-overload]
    stats = {k: float(v) * n for k, v in scores.items() if k != "n" and isinstance(v, float)}
    return LossSum(total=torch.tensor(stats.pop("loss", 0.0)), count=n, stats=stats)


def _graded(rows: Rows) -> bool:
    kinds = {isinstance(r[1], list) for r in rows}
    if len(kinds) > 1:
        raise EncoderforgeError("embed pairs mix graded scores and negatives lists; use one kind per file")
    return kinds == {False}


def _build_model(encoder: Encoder, labels: list[str], args: TaskArgs) -> EmbedModel:
    width = encoder.cfg.hidden_size
    bad = [d for d in args.embed.dims if not 0 < d <= width]  # type: ignore[attr-defined]
    if bad:
        raise EncoderforgeError(f"embed.dims: {bad[0]} is not in 1..{width} (the model's hidden size); fix --set embed.dims")
    e = args.embed  # type: ignore[attr-defined]
    bad_layers = [n for n in e.layers if not 0 < n <= encoder.cfg.num_layers]
    if bad_layers:
        raise EncoderforgeError(
            f"embed.layers: {bad_layers[0]} is not in 1..{encoder.cfg.num_layers} (the model's layers); fix --set embed.layers"
        )
    if args.finetune.pooling not in ("mean", "cls"):
        raise EncoderforgeError(
            f"finetune.pooling {args.finetune.pooling}: an embedding run pools by mean or cls (pooler is a classifier "
            "head's [CLS] + dense + tanh); fix --set finetune.pooling"
        )
    return EmbedModel(encoder, pooling=args.finetune.pooling, attention_dropout=e.attention_dropout, layers=e.layers)


# ---- fine-tuning and prediction glue ----------------------------------------------------------------------------


def _build_task(
    tok: Tokenizer, labels: list[str], train: Rows, dev: Rows, args: TaskArgs, *, rank: int = 0, world: int = 1
) -> EmbedTask:
    e = args.embed  # type: ignore[attr-defined]
    return EmbedTask(
        tok, train, dev, max_length=args.finetune.max_length, batch_rows=args.train.batch_rows,
        micro_rows=args.train.micro_rows, seed=args.train.seed, rank=rank, world=world,
        loss=e.loss, scale=e.scale, symmetric=e.symmetric, dims=e.dims, dim_weights=e.dim_weights,
    )  # fmt: skip


def _task_json(args: TaskArgs) -> Meta:
    e = args.embed  # type: ignore[attr-defined]
    return {"max_length": args.finetune.max_length, "pooling": args.finetune.pooling, "normalize": True, "dims": None,
            "matryoshka_dims": list(e.dims), "matryoshka_layers": list(e.layers), "loss": e.loss}  # fmt: skip


@torch.inference_mode()
def _predict(engine: HiddenStates, head: nn.Module, meta: Meta, texts: Sequence[str]) -> list[dict]:
    """One text per line -> {"embedding": [...]}: the pooled vector as `load_embedder(RUN).embed` makes it (L2-normalised
    unless the run says not; rotated and cut to meta["dims"] for an `index rotate` run)."""
    ids = encode_texts(engine.tokenizer, [(t,) for t in texts], meta["max_length"]).ids
    out: list[Any] = [None] * len(ids)
    norm = bool(meta.get("normalize", True))
    for b in engine.forward_batches(ids):
        pooled = head(b.hidden, b.mask).float()
        pooled = F.normalize(pooled, dim=-1) if norm else pooled
        vec = shape_vectors(pooled.numpy(), rotation=meta.get("rotation_matrix"), dims=meta.get("dims"), normalize=norm)
        for i, v in zip(b.index, vec):
            out[i] = {"embedding": [round(float(x), 6) for x in v]}
    return out


SPEC = TaskSpec(
    kind="embed",
    label_type="pairs",
    primary="ndcg@10",
    build_model=_build_model,
    build_task=_build_task,
    task_json=_task_json,
    build_head=lambda cfg, meta: EmbedHead(meta["pooling"]),
    predict=_predict,
)
