"""ColBERT-style late interaction (Khattab & Zaharia 2020, "ColBERT: Efficient and Effective Passage Search via
Contextualized Late Interaction over BERT"): every token of a text becomes a small unit vector (the encoder's last
states, a linear projection to `dim`, L2 normalisation), and a query scores a document by MaxSim,

    s(q, d) = sum over query tokens i of max over document tokens j of  q_i . d_j      (the paper's Eq. 3)

Training is the in-batch softmax cross-entropy over MaxSim scores: query i must pick its positive among every
positive and hard negative of the batch (ColBERT's pairwise softmax over (q, d+, d-), widened to the whole batch as
ColBERTv2 and MNRL do). The scores are the raw MaxSim sums (no temperature), as in the paper.

Batching and the dev evaluation are embed.py's: the same pairs files, the same no-duplicates batches of packed
unique texts (`EmbedTask` is composed, not copied), and embed's `ranking_metrics` over a (Q, D) MaxSim matrix.
Not done (yet): the paper's [Q]/[D] marker tokens and query augmentation with [MASK] padding (prediction has no
query/document switch), and its punctuation filter on document tokens.
Shapes: S texts in a batch, N their tokens, T the longest, C hidden, D = `dim`, B pairs, K negatives per pair.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Dataset
from encoderforge.model.attention import Attention
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import head_linear
from encoderforge.model.padding import Padded, layout_from_lengths, pad_packed
from encoderforge.tasks import LossSum
from encoderforge.tasks.embed import DevSet, EmbedTask, PairBatch, dev_sums, length_groups, ranking_metrics
from encoderforge.tasks.sequences import encode_texts
from encoderforge.tasks.spec import HiddenStates, Meta, Rows, TaskArgs, TaskSpec

DIM = 128  # the paper's token vector size ("m = 128"): a quarter of MiniLM's 384 and 32x smaller than BERT-base's states
EVAL_ROWS = 64  # texts per forward when encoding a dev set
SIM_BUDGET = 1 << 24  # floats in one (A, b, Tq, Td) similarity block of `maxsim` (64 MiB)


class ColBERTHead(nn.Module):
    """Linear projection of every token state to `dim`, then L2 normalisation: (..., C) -> (..., D) unit vectors."""

    def __init__(self, hidden_size: int, dim: int = DIM):
        super().__init__()
        self.proj = head_linear(hidden_size, dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(hidden), dim=-1)


class ColBERTModel(nn.Module):
    """Encoder + ColBERTHead over packed texts: forward(input_ids (N,), lengths (S,)) -> Padded((S, T, D) unit token
    vectors, zeros at padding; (S, T) mask).

    Args:
        encoder: the start encoder; dim: token vector size D (the paper's 128).
        attention_dropout: replaces the encoder's attention dropout while fine-tuning (as EmbedModel).
    Example:
        >>> out = ColBERTModel(encoder)(ids, lengths)   # out.hidden: (S, T, 128), out.mask: (S, T)
        >>> scores = maxsim(out.hidden[:2], out.mask[:2], out.hidden[2:], out.mask[2:])   # (2, S - 2)
    """

    def __init__(self, encoder: Encoder, dim: int = DIM, *, attention_dropout: float | None = None):
        super().__init__()
        self.encoder = encoder.for_task_heads()
        self.head = ColBERTHead(encoder.cfg.hidden_size, dim)
        if attention_dropout is not None:
            for m in self.encoder.modules():
                if isinstance(m, Attention):
                    m.dropout_p = attention_dropout

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> Padded:
        starts = torch.cumsum(lengths, 0) - lengths  # (S,)
        out = torch.zeros(input_ids.shape[0], self.head.proj.out_features, device=input_ids.device)  # (N, D)
        for rows in length_groups(lengths):  # short queries and long documents apart (embed.py's reason)
            where = torch.cat([torch.arange(int(starts[i]), int(starts[i] + lengths[i])) for i in rows.tolist()])
            where = where.to(input_ids.device)  # (n,) rows of this group's tokens in the packed order
            packed = self.encoder.forward_packed(input_ids[where], lengths[rows])  # (n, C)
            out = out.to(packed.hidden.dtype).index_copy(0, where, self.head(packed.hidden))
        return pad_packed(out, layout_from_lengths(lengths))  # (S, T, D), (S, T)


def maxsim(q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """Late-interaction scores of every query against every document (the module docstring's s(q, d)).

    Args:
        q: (A, Tq, D) query token vectors; q_mask: (A, Tq) bool, True = real token (padding adds nothing).
        d: (B, Td, D) document token vectors; d_mask: (B, Td) bool (padding is never the max).
    Returns:
        (A, B) float scores; -inf for a document without tokens.
    """
    a, tq, _ = q.shape
    step = max(1, SIM_BUDGET // max(1, a * tq * d.shape[1]))  # documents per block
    out = []
    for j in range(0, d.shape[0], step):
        sim = torch.einsum("aqc,btc->abqt", q, d[j : j + step])  # (A, b, Tq, Td)
        sim = sim.masked_fill(~d_mask[None, j : j + step, None, :], -math.inf)
        best = sim.amax(dim=-1).masked_fill(~q_mask[:, None, :], 0.0)  # (A, b, Tq)
        out.append(best.sum(dim=-1))
    return torch.cat(out, dim=1) if out else q.new_zeros(a, 0)


def maxsim_loss(q: torch.Tensor, q_mask: torch.Tensor, docs: torch.Tensor, docs_mask: torch.Tensor) -> torch.Tensor:
    """In-batch softmax cross-entropy over MaxSim scores: row i of `docs` is query i's positive, every other row
    (the other positives, then the hard negatives) is a negative for it.

    Args:
        q: (B, Tq, D) with q_mask (B, Tq); docs: (B + K * B, Td, D) with docs_mask, positives first.
    Returns:
        () the mean loss over the B queries.
    """
    scores = maxsim(q, q_mask, docs, docs_mask)  # (B, B + K*B)
    return F.cross_entropy(scores, torch.arange(q.shape[0], device=q.device))


def _pairs_only(rows: Rows, where: Sequence[str]) -> None:
    """`where[i]` names row i in the error (a file:line, or "colbert train row N")."""
    for i, r in enumerate(rows):
        if not isinstance(r[1], list):
            raise EncoderforgeError(
                f"{where[i]}: 'negatives' is a score ({r[1]!r}); ColBERT trains on ranking pairs "
                '{"query", "positive", "negatives": [...]}: drop the score, or use `finetune embed` (CoSENT)'
            )


def check_examples(ds: Dataset) -> None:
    """Fail on the first graded row, naming its file and line (before any model loads)."""
    _pairs_only([(ex.texts, ex.label) for ex in ds.examples], [ex.where for ex in ds.examples])


class ColBERTTask:
    """ColBERT fine-tuning for the training loop (module docstring).

    Args:
        tokenizer, train / dev: ((query, positive), negatives list) rows; max_length, batch_rows, micro_rows, seed,
        rank, world: as EmbedTask (whose no-duplicates batching this task uses).
    """

    primary = "ndcg@10"

    def __init__(self, tokenizer: Tokenizer, train: Rows, dev: Rows, **batching: Any):
        for rows, what in ((train, "train"), (dev, "dev")):
            _pairs_only(rows, [f"colbert {what} row {i + 1}" for i in range(len(rows))])
        self.pairs = EmbedTask(tokenizer, train, dev, loss="mnrl", **batching)  # the texts, ids and batches
        self.tok, self.max_length, self.batch_rows = tokenizer, self.pairs.max_length, self.pairs.batch_rows

    def train_batches(self, start_step: int) -> Iterator[list[PairBatch]]:
        return self.pairs.train_batches(start_step)

    def eval_batches(self) -> Iterator[DevSet]:
        return self.pairs.eval_batches()

    def loss(self, model: nn.Module, batch: PairBatch | DevSet) -> LossSum:
        if isinstance(batch, DevSet):
            return dev_sums(self.evaluate(model, batch.rows))
        out = model(batch.input_ids, batch.lengths)  # (S, T, D)
        vec, mask = out.hidden.float(), out.mask
        docs = torch.cat([batch.positive, batch.negatives])  # (B + K*B,)
        loss = maxsim_loss(vec[batch.query], mask[batch.query], vec[docs], mask[docs])
        b = batch.query.shape[0]
        return LossSum(total=loss * b, count=b, tokens=int(batch.input_ids.numel()))

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return self.pairs.metrics(sums)

    @torch.no_grad()
    def encode(self, model: nn.Module, texts: Sequence[str]) -> Padded:
        """Texts -> Padded((n, T, D) float32 token vectors, (n, T) mask) on the CPU, in input order."""
        was_training = model.training
        model.eval()
        ids = encode_texts(self.tok, [(t,) for t in texts], self.max_length).ids
        width = max((len(x) for x in ids), default=0)
        vec = torch.zeros(len(ids), width, int(model.head.proj.out_features))  # type: ignore[union-attr, arg-type]
        mask = torch.zeros(len(ids), width, dtype=torch.bool)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        device = next(model.parameters()).device
        for j in range(0, len(order), EVAL_ROWS):
            part = order[j : j + EVAL_ROWS]
            flat = torch.tensor([x for i in part for x in ids[i]], dtype=torch.long, device=device)
            out = model(flat, torch.tensor([len(ids[i]) for i in part], dtype=torch.long, device=device))
            t = out.hidden.shape[1]
            vec[part, :t], mask[part, :t] = out.hidden.float().cpu(), out.mask.cpu()
        model.train(was_training)
        return Padded(hidden=vec, mask=mask)

    def evaluate(self, model: nn.Module, rows: Rows) -> dict[str, object]:
        """Full retrieval by MaxSim over the rows' unique positives: nDCG@10, MRR@10, Recall@1/10 (embed's
        `ranking_metrics`); "loss" is the in-batch loss over consecutive batches of `batch_rows` rows."""
        a_texts = list(dict.fromkeys(r[0][0] for r in rows))
        b_texts = list(dict.fromkeys(r[0][1] for r in rows))
        qa, db = self.encode(model, a_texts), self.encode(model, b_texts)
        scores = maxsim(qa.hidden, qa.mask, db.hidden, db.mask)  # (Q, D)
        ai, bi = {t: i for i, t in enumerate(a_texts)}, {t: i for i, t in enumerate(b_texts)}
        pairs = [(ai[r[0][0]], bi[r[0][1]]) for r in rows]
        total = 0.0
        for j in range(0, len(pairs), self.batch_rows):  # hard negatives are not scored (as embed's dev loss)
            qs, ds = (torch.tensor(c) for c in zip(*pairs[j : j + self.batch_rows]))
            total += float(F.cross_entropy(scores[qs][:, ds], torch.arange(len(qs)), reduction="sum"))
        return {"n": len(a_texts), "loss": total / max(len(pairs), 1), **ranking_metrics(scores, pairs)}


# ---- fine-tuning and prediction glue ----------------------------------------------------------------------------


def _build_model(encoder: Encoder, labels: list[str], args: TaskArgs) -> ColBERTModel:
    return ColBERTModel(encoder, DIM, attention_dropout=args.embed.attention_dropout)  # type: ignore[attr-defined]


def _build_task(
    tok: Tokenizer, labels: list[str], train: Rows, dev: Rows, args: TaskArgs, *, rank: int = 0, world: int = 1
) -> ColBERTTask:
    t = args.train
    return ColBERTTask(
        tok, train, dev, max_length=args.finetune.max_length, batch_rows=t.batch_rows, micro_rows=t.micro_rows,
        seed=t.seed, rank=rank, world=world,
    )  # fmt: skip


def _build_head(cfg: EncoderConfig, meta: Meta) -> ColBERTHead:
    return ColBERTHead(cfg.hidden_size, int(meta.get("dim", DIM)))


@torch.inference_mode()
def _predict(engine: HiddenStates, head: nn.Module, meta: Meta, texts: Sequence[str]) -> list[dict]:
    """One text per line -> {"tokens": [...], "vectors": [[...], ...]}: its wordpieces (with [CLS]/[SEP]) and one
    unit D-vector per piece, what `index.late.LateIndex` stores and queries with."""
    ids = encode_texts(engine.tokenizer, [(t,) for t in texts], meta["max_length"]).ids
    out: list[Any] = [None] * len(ids)
    for b in engine.forward_batches(ids):
        vec = head(b.hidden.float())  # (B, T, D)
        for row, i in enumerate(b.index):
            n = len(ids[i])
            out[i] = {
                "tokens": [engine.tokenizer.id_to_token(x) for x in ids[i]],
                "vectors": [[round(float(x), 6) for x in v] for v in vec[row, :n]],
            }
    return out


SPEC = TaskSpec(
    kind="colbert",
    label_type="pairs",
    primary="ndcg@10",
    build_model=_build_model,
    build_task=_build_task,
    task_json=lambda args: {"max_length": args.finetune.max_length, "dim": DIM, "normalize": True},
    build_head=_build_head,
    predict=_predict,
    check_examples=check_examples,
)
