"""Masked language modelling: packed rows -> masked batch -> encoder -> MLM head on masked positions only.

The model lives here; its batches, row stream and loss (MLMTask) are in tasks/masked.py, shared with ELECTRA and
anchored MLM, and re-exported below for existing importers.
Sparse prediction (MosaicBERT): the decoder (C x V, the largest matmul for small encoders) runs on the M masked
positions, not on all N tokens; with 15-30% masking that skips 70-85% of it.
Shapes: N packed tokens, S segments, M masked positions, C hidden, V vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model import checkpoint
from encoderforge.model.encoder import Encoder, _init_weights
from encoderforge.model.heads import MLMHead
from encoderforge.tasks.masked import MLMBatch, MLMTask, collate, masked_ce

__all__ = ["MLMBatch", "MLMTask", "MaskedLM", "collate", "masked_ce"]


class MaskedLM(nn.Module):
    """Encoder + MLM head whose decoder is tied to the word embeddings. `forward` returns logits for the masked
    positions only: (M, V).

    Example:
        >>> model = MaskedLM(Encoder(preset("bert-tiny", vocab_size=30522)))
        >>> logits = model(batch.input_ids, batch.lengths, batch.positions)  # (M, V)
    """

    def __init__(self, encoder: Encoder, head: MLMHead | None = None):
        super().__init__()
        self.encoder = encoder.for_task_heads()  # packed rows; the pooler is unused, so frozen
        if head is None:
            head = MLMHead(encoder.cfg)
            head.apply(_init_weights)
        self.mlm = head

    def forward(
        self, input_ids: torch.Tensor, lengths: torch.Tensor, positions: torch.Tensor, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (M, V) at `positions`; with return_hidden, also every token's final features (N, C).
        Without it the encoder's last layer runs on the masked positions only (Encoder.forward_packed `rows`)."""
        if not return_hidden:
            hidden = self.encoder.forward_packed(input_ids, lengths, rows=positions).hidden  # (M, C)
            return self.mlm(hidden, self.encoder.embeddings.tok.weight)  # (M, V)
        hidden = self.encoder.forward_packed(input_ids, lengths).hidden  # (N, C)
        return self.mlm(hidden[positions], self.encoder.embeddings.tok.weight), hidden

    @staticmethod
    def from_checkpoint(path: str | Path, *, require_head: bool = False) -> "MaskedLM":
        """Load our checkpoint or a Hugging Face BERT directory; reuse its MLM head if it has one, else a fresh head
        (e.g. sentence-transformers MiniLM ships none) unless `require_head` (evaluating a head needs a trained one)."""
        loaded = checkpoint.load(path)
        model = MaskedLM(loaded.encoder)
        head = {k[len("mlm.") :]: v for k, v in loaded.extra.items() if k.startswith("mlm.")}
        if require_head and not head:
            raise EncoderforgeError(
                f"{path}: no MLM head in this checkpoint; pass the `model` directory of an "
                "`encoderforge pretrain` run (it saves the head beside the encoder)"
            )
        if head:
            missing, unexpected = model.mlm.load_state_dict(head, strict=False)
            if missing or unexpected:
                raise EncoderforgeError(
                    f"{path}: MLM head tensors do not match (missing {missing}, unexpected "
                    f"{unexpected}); remove them to start from a fresh head"
                )
        return model
