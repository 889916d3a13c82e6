"""Replaced-token detection (ELECTRA, Clark et al. 2020): a small generator fills the masked positions with samples
from its MLM distribution, and the discriminator (the encoder we keep) predicts for *every* token whether it was
replaced. Learning from all N tokens instead of the ~15% masked ones is what makes RTD sample-efficient.

The generator owns no embeddings: it reads the discriminator's embedding layer (token, position and type tables and
their LayerNorm, as ELECTRA's code shares them), projected to its narrower width, and its decoder is tied to the same
token table. Sampling is not differentiated (the discriminator's loss never reaches the generator) and draws each
row's uniforms from its own seeded generator, so samples depend on neither micro-batching nor resumption.

Shapes: N packed tokens, S segments, R rows, M masked positions, C discriminator hidden, G generator hidden,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.packing import Row
from encoderforge.data.shards import Documents
from encoderforge.model import checkpoint
from encoderforge.model.attention import AttnContext, rope_tables
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder, _init_weights
from encoderforge.model.layers import Block
from encoderforge.model.padding import Unpadded, layout_from_lengths, positions_unpadded
from encoderforge.tasks import LossSum
from encoderforge.tasks.masked import MLMBatch, MLMTask
from encoderforge.tasks.masked import collate as mlm_collate

_SAMPLE_SALT = 0xE1EC7A  # keeps sampling seeds apart from the masking seeds of the same rows


@dataclass
class ElectraBatch:
    mlm: MLMBatch  # masked ids (the generator's input), segment lengths, masked positions, original ids there
    row_seeds: list[int]  # (R,) sampling seed of each packed row
    row_masked: list[int]  # (R,) masked positions per row, rows in batch order (sums to M)

    def to(self, device: torch.device | str) -> "ElectraBatch":
        return ElectraBatch(self.mlm.to(device), self.row_seeds, self.row_masked)


@dataclass
class ElectraOutput:
    gen_logits: torch.Tensor  # (M, V) generator logits at the masked positions
    sampled: torch.Tensor  # (M,) the generator's samples placed there
    disc_logits: torch.Tensor  # (N,) replaced-vs-original logit of every token
    replaced: torch.Tensor  # (N,) bool target: the discriminator's input differs from the original there


def generator_config(disc: EncoderConfig, width: float, depth: float) -> EncoderConfig:
    """The generator's shape: `width` x the hidden and FFN sizes, `depth` x the layers, heads of the discriminator's
    head size where the width allows (ELECTRA-Small: 1/4 width, same depth, 64-wide heads)."""
    hidden = max(1, round(disc.hidden_size * width))
    heads = max(1, hidden // disc.head_dim)
    hidden = heads * max(1, round(hidden / heads))
    if disc.position == "rope" and (hidden // heads) % 2:
        hidden += heads  # RoPE rotates pairs of channels
    return dataclasses.replace(
        disc,
        hidden_size=hidden,
        num_heads=heads,
        num_layers=max(1, round(disc.num_layers * depth)),
        intermediate_size=max(1, round(disc.intermediate_size * width)),
    )


class Generator(nn.Module):
    """ELECTRA's generator: blocks of width G over the discriminator's embedding output, then its MLM head
    (`generator_predictions`: dense G -> C, GELU, LayerNorm) and a decoder tied to the shared token table.
    It has no embedding tables of its own."""

    def __init__(self, cfg: EncoderConfig, embed_size: int):
        super().__init__()
        self.cfg = cfg
        self.project = nn.Linear(embed_size, cfg.hidden_size) if cfg.hidden_size != embed_size else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        pre = cfg.norm == "pre"
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias) if pre else None
        self.dense = nn.Linear(cfg.hidden_size, embed_size)
        self.norm = nn.LayerNorm(embed_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(_init_weights)

    def forward(
        self, emb: torch.Tensor, layout: Unpadded, positions: torch.Tensor, masked: torch.Tensor, table: torch.Tensor
    ) -> torch.Tensor:
        """(N, C) embeddings, their layout and (N,) in-segment positions, (M,) masked indices, (V, C) token table
        -> (M, V) logits (sparse prediction: the decoder runs on the masked positions only)."""
        rope = None
        if self.cfg.position == "rope":  # the generator's heads are narrower than the discriminator's
            rope = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta, table.dtype)
        ctx = AttnContext.unpadded(layout, rope=rope)
        x = emb if self.project is None else self.project(emb)  # (N, G)
        for i, block in enumerate(self.layers):  # the last block runs on the masked positions only
            x = block(x, ctx, masked if i == len(self.layers) - 1 else None)
        if self.final_norm is not None:
            x = self.final_norm(x)
        h = self.norm(F.gelu(self.dense(x)))  # (M, C)
        return F.linear(h, table, self.bias)  # (M, V)


class RTDHead(nn.Module):
    """ELECTRA's discriminator head (`discriminator_predictions`): dense, GELU, one logit per token: (N, C) -> (N,)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, 1)
        self.apply(_init_weights)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.dense(hidden))).squeeze(-1)  # (N,)


def sample(logits: torch.Tensor, seeds: list[int], counts: list[int]) -> torch.Tensor:
    """One token per masked position from softmax(logits) by inverse-CDF sampling: a single uniform per position,
    row r's `counts[r]` uniforms drawn from a generator seeded `seeds[r]`. (M, V) -> (M,) int64.

    One uniform per position instead of V (Gumbel-max) matters on CPU: at M=600, V=30,522, one thread, Gumbel noise
    took 0.63 s per step and this takes 0.12 s (a whole bert-tiny step is ~0.7 s)."""
    gen = torch.Generator(device=logits.device)
    u = []
    for seed, n in zip(seeds, counts):
        gen.manual_seed(seed)
        u.append(torch.rand(n, device=logits.device, generator=gen))
    cdf = logits.float().softmax(-1).cumsum(-1)  # (M, V)
    if not u:
        return torch.zeros(0, dtype=torch.int64, device=logits.device)
    target = torch.cat(u)[:, None] * cdf[:, -1:]  # (M, 1), scaled by the total so float rounding cannot overshoot
    # first index whose CDF exceeds the uniform: P(i) = p_i, and zero-probability tokens are never drawn
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)


def corrupt(original: torch.Tensor, masked: torch.Tensor, sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's input and target: samples placed at the masked positions, and True only where the input
    now differs from the original (ELECTRA: a sample equal to the original token is labelled original).
    (N,) ids, (M,) positions, (M,) samples -> (N,) ids, (N,) bool."""
    ids = original.clone()
    ids[masked] = sampled
    return ids, ids != original


class Electra(nn.Module):
    """Discriminator (`encoder` + `rtd`) and generator; `encoder` is the model we keep. `forward` masks nothing
    itself: it takes an ElectraBatch and returns ElectraOutput.

    Example:
        >>> model = Electra(Encoder(preset("bert-tiny", vocab_size=30522)), width=0.25)
        >>> out = model(batch)  # out.disc_logits: (N,), out.gen_logits: (M, V)
    """

    def __init__(self, encoder: Encoder, *, width: float = 0.25, depth: float = 1.0):
        super().__init__()
        self.encoder = encoder.for_task_heads()  # packed rows; the pooler is unused, so frozen
        self.rtd = RTDHead(encoder.cfg)
        self.generator = Generator(generator_config(encoder.cfg, width, depth), encoder.cfg.hidden_size)

    def forward(self, batch: ElectraBatch) -> ElectraOutput:
        b = batch.mlm
        # the generator is a second (narrower) stack over the shared embeddings, so it takes the layout itself; the
        # discriminator reuses it below (Encoder.forward_unpadded) instead of forward_packed rebuilding it: one
        # host-device sync per step, not two
        layout = layout_from_lengths(b.lengths)
        positions = positions_unpadded(layout)  # (N,)
        emb = self.encoder.embeddings(b.input_ids, positions)  # (N, C): the shared embedding layer
        gen_logits = self.generator(emb, layout, positions, b.positions, self.encoder.embeddings.tok.weight)  # (M, V)
        with torch.no_grad():  # sampling is discrete: no gradient from the discriminator into the generator
            sampled = sample(gen_logits.detach(), batch.row_seeds, batch.row_masked)  # (M,)
            original = b.input_ids.clone()
            original[b.positions] = b.labels
            disc_ids, replaced = corrupt(original, b.positions, sampled)
        hidden = self.encoder.forward_unpadded(disc_ids, layout)  # (N, C): the generator's layout
        return ElectraOutput(gen_logits=gen_logits, sampled=sampled, disc_logits=self.rtd(hidden), replaced=replaced)

    @staticmethod
    def from_checkpoint(path: str | Path, *, width: float = 0.25, depth: float = 1.0) -> "Electra":
        """Continue from a checkpoint (ours or Hugging Face BERT, e.g. MiniLM) as the discriminator; reuse its RTD head
        and generator if it has them (an earlier ELECTRA run), else start them fresh."""
        loaded = checkpoint.load(path)
        model = Electra(loaded.encoder, width=width, depth=depth)
        for name in ("rtd", "generator"):
            part = {k[len(name) + 1 :]: v for k, v in loaded.extra.items() if k.startswith(name + ".")}
            if not part:
                continue
            try:
                getattr(model, name).load_state_dict(part)
            except RuntimeError as e:
                raise EncoderforgeError(
                    f"{path}: its {name} tensors do not fit this run ({str(e).splitlines()[0]}); "
                    "use the electra.generator_width/depth it was trained with, or remove the "
                    f"'{name}.*' tensors to start a fresh one"
                ) from None
        return model


def collate(docs: list[Documents], rows: list[Row], vocab: MaskVocab, masking: MaskingConfig, seed: int) -> ElectraBatch:
    """MLM's packed, masked batch (same masks), plus each row's sampling seed and number of masked positions."""
    mlm = mlm_collate(docs, rows, vocab, masking, seed)
    ends = np.cumsum([sum(b - a + 2 for _, _, a, b in row.pieces) for row in rows])  # (R,) row ends in the flat batch
    counts = np.diff(np.searchsorted(mlm.positions.numpy(), np.concatenate(([0], ends))))  # positions are sorted
    seeds = [int(np.random.SeedSequence([seed, _SAMPLE_SALT, row.index]).generate_state(1, np.uint64)[0]) for row in rows]
    return ElectraBatch(mlm=mlm, row_seeds=seeds, row_masked=counts.tolist())


class ElectraTask:
    """The ELECTRA task for the training loop. Rows, masks and evaluation rows are those of `data` (an MLMTask).

    The loss is a sum over the N real tokens with fixed per-token weights, so gradient accumulation and DDP stay
    exact: lambda * BCE for every token, plus the generator's cross-entropy / masking.ratio on masked tokens. Its
    mean is ELECTRA's gen_mlm + lambda * disc_bce (up to the share of [CLS]/[SEP], which are never masked).

    Args:
        data: the MLM task that defines the corpus, masking, batch split and seed.
        disc_weight: lambda (paper: 50).
    """

    def __init__(self, data: MLMTask, *, disc_weight: float = 50.0):
        self.data, self.disc_weight = data, disc_weight
        self._eval: list[ElectraBatch] | None = None

    def train_batches(self, start_step: int) -> Iterator[list[ElectraBatch]]:
        d = self.data  # the same rows as MLMTask.train_batches
        for micro in d.train_row_batches(start_step):
            yield [collate(d.train_docs, rows, d.vocab, d.masking, d.seed) for rows in micro]

    def eval_batches(self) -> list[ElectraBatch]:
        d = self.data
        if self._eval is None:  # fixed rows, masks and sampling seeds (as MLMTask.eval_batches)
            docs = d.eval_docs  # None: no eval corpus, and eval_row_batches() is empty anyway
            self._eval = (
                [] if docs is None else [collate(docs, rows, d.vocab, d.masking, d.seed + 1) for rows in d.eval_row_batches()]
            )
        return self._eval

    def loss(self, model: nn.Module, batch: ElectraBatch) -> LossSum:
        out: ElectraOutput = model(batch)
        labels = batch.mlm.labels
        ce = F.cross_entropy(out.gen_logits.float(), labels, reduction="sum")
        disc = out.disc_logits.float()  # (N,)
        bce = F.binary_cross_entropy_with_logits(disc, out.replaced.float(), reduction="sum")
        total = ce / self.data.masking.ratio + self.disc_weight * bce
        flagged = disc > 0  # predicted "replaced"
        n = int(disc.numel())
        stats = {
            "gen_loss": ce.item(),
            "gen_correct": (out.gen_logits.argmax(-1) == labels).sum().item(),
            "masked": float(labels.numel()),
            "disc_loss": bce.item(),
            "disc_correct": (flagged == out.replaced).sum().item(),
            "replaced": out.replaced.sum().item(),
            "flagged": flagged.sum().item(),
            "flagged_replaced": (flagged & out.replaced).sum().item(),
        }
        return LossSum(total=total, count=n, tokens=n, stats={k: float(v) for k, v in stats.items()})

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        masked, n = max(sums.get("masked", 0.0), 1.0), sums["count"]
        rate = min(max(sums.get("replaced", 0.0) / n, 1e-12), 1 - 1e-12)  # share of all tokens that were replaced
        return {
            "loss": sums["loss"] / n,
            "gen_mlm_loss": sums.get("gen_loss", 0.0) / masked,
            "gen_mlm_accuracy": sums.get("gen_correct", 0.0) / masked,
            "disc_loss": sums.get("disc_loss", 0.0) / n,
            "disc_accuracy": sums.get("disc_correct", 0.0) / n,
            # of the tokens flagged "replaced", the share that were (no AUC: a threshold at logit 0)
            "disc_precision": sums.get("flagged_replaced", 0.0) / max(sums.get("flagged", 0.0), 1.0),
            "disc_recall": sums.get("flagged_replaced", 0.0) / max(sums.get("replaced", 0.0), 1.0),
            # masked tokens whose sample differs from the original: falls as the generator improves
            "replaced_share": sums.get("replaced", 0.0) / masked,
            # the BCE of the best content-blind discriminator (always predict `rate`): disc_loss must go below
            # this, not just below its step-0 value, to show the discriminator reads the context
            "disc_prior_loss": float(-(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))),
        }
