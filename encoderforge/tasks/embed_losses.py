"""Embedding losses as pure functions of pooled vectors: multiple-negatives ranking (InfoNCE), CoSENT, and their
Matryoshka sums over truncated dimensions. Each returns the MEAN loss of the batch (what sentence-transformers
returns; tests/tasks/test_embed_losses.py checks equality with its loss classes on the same vectors).

Written here rather than called from sentence-transformers: its losses take its own model and feature dicts, ours
take the packed encoder's pooled rows, and the loop needs plain tensors.
Shapes: B pairs in the batch, K hard negatives per pair, C embedding width.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def cos_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, C) x (B, C) -> (A, B) cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def mnrl(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    scale: float = 20.0,
    symmetric: bool = False,
    offset: int = 0,
    all_queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multiple-negatives ranking loss (InfoNCE with in-batch negatives; Henderson et al. 2017, SBERT's MNRL).

    Query i must pick its positive among every positive and hard negative of the batch: cross-entropy over
    scale * cos(q_i, candidates). `symmetric` adds the document -> query direction with its own softmax and
    averages the two (sentence-transformers' MultipleNegativesSymmetricRankingLoss / "per_direction").

    Args:
        queries: (B, C) this process's queries; positives: (P, C) the positives of every process (P = B on one
            process), this process's at rows offset..offset+B; negatives: (M, C) hard negatives (any order: they
            are only candidates), or None; all_queries: (P, C) every process's queries (symmetric only; default
            `queries`). Gathering positives and negatives over processes makes them candidates for every query
            (sentence-transformers' gather_across_devices).
    Returns:
        () the mean loss over this process's queries.
    """
    b = queries.shape[0]
    docs = positives if negatives is None else torch.cat([positives, negatives])  # (P + M, C)
    q2d = cos_matrix(queries, docs) * scale  # (B, P + M)
    rows = torch.arange(b, device=queries.device)
    pos = q2d[rows, rows + offset]  # (B,)
    log_z = torch.logsumexp(q2d, dim=1)
    if symmetric:  # doc_i must pick query i among the batch's queries
        d2q = cos_matrix(positives[offset : offset + b], queries if all_queries is None else all_queries) * scale
        log_z = (log_z + torch.logsumexp(d2q, dim=1)) / 2
    return -(pos - log_z).mean()


def cosent(a: torch.Tensor, b: torch.Tensor, scores: torch.Tensor, *, scale: float = 20.0) -> torch.Tensor:
    """CoSENT (Su 2022): for every two pairs whose gold scores differ, the higher-scored pair's cosine should be the
    higher one: log(1 + sum over (i, j) with y_i > y_j of exp(scale * (cos_j - cos_i))).

    Args:
        a, b: (B, C) the two sides; scores: (B,) graded gold similarities.
    Returns:
        () the loss (one term for the whole batch, as the paper and sentence-transformers define it).
    """
    cos = F.cosine_similarity(a, b, dim=-1) * scale  # (B,)
    diff = cos[:, None] - cos[None, :]  # (B, B): cos_i - cos_j
    higher = scores[:, None] < scores[None, :]  # (B, B): pair j outranks pair i -> penalise cos_i - cos_j
    terms = diff[higher]  # the O(B^2) form: batches are small, and it reads like the formula
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


def matryoshka(loss: Callable[[int], torch.Tensor], dims: Sequence[int], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Matryoshka representation learning (Kusupati et al. 2022): the weighted sum of a loss computed on the first
    `d` coordinates of every embedding, for each d in `dims` (sentence-transformers' MatryoshkaLoss).

    Args:
        loss: d -> the loss with every embedding truncated to its first d coordinates.
        dims: the truncation widths, e.g. (384, 192, 96, 48); weights: one per dim (default 1 each).
    """
    weights = [1.0] * len(dims) if weights is None else weights
    return torch.stack([w * loss(d) for d, w in zip(dims, weights)]).sum()


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(R, C) rows of this process -> every process's rows concatenated in rank order, and where this process's start.
    Gradients flow back to each process's own rows (torch.distributed.nn.all_gather); processes may hold different
    row counts (padded for the collective, cut after)."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(c) for c in sizes]
    padded = torch.cat([x, x.new_zeros(max(counts) - x.shape[0], x.shape[1])])  # (max R, C)
    parts = all_gather(padded)
    return torch.cat([part[:c] for part, c in zip(parts, counts)]), sum(counts[: dist.get_rank()])
