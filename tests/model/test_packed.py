"""The encoder's packed entry point: `forward_packed` + `pad_packed` equal the padded forward of every attention
backend (tiny configs and the real MiniLM), and `rows=` equals the full forward indexed at those rows."""

from __future__ import annotations

import pytest
import torch

from encoderforge.model import Encoder, preset
from encoderforge.model.checkpoint import load
from encoderforge.model.padding import layout_from_lengths, pad_packed, sequence_starts
from encoderforge.tokenization import load_tokenizer

BACKENDS = ("eager", "sdpa", "varlen")


def _packed(lengths: list[int], vocab: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) random ids of sequences back to back (a [CLS]-like 1 first) and their (B,) lengths."""
    ids = torch.randint(2, vocab, (sum(lengths),))
    ids[sequence_starts(torch.tensor(lengths))] = 1
    return ids, torch.tensor(lengths)


def _grid(flat: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same sequences as a padded (B, T) batch (pad id 0) and its 0/1 mask, built without padding.py."""
    T = int(lengths.max())
    ids = torch.zeros(len(lengths), T, dtype=flat.dtype)
    for b, seq in enumerate(flat.split(lengths.tolist())):
        ids[b, : len(seq)] = seq
    return ids, (torch.arange(T)[None] < lengths[:, None]).long()


@pytest.mark.parametrize("norm,pos", [("post", "learned"), ("pre", "rope")])
def test_forward_packed_equals_padded_forward_of_every_backend(norm, pos):
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=100, norm=norm, position=pos)).eval()
    flat, lengths = _packed([7, 3, 11, 1, 11])
    ids, mask = _grid(flat, lengths)
    with torch.no_grad():
        out = enc.set_attention("varlen").forward_packed(flat, lengths)
        grid = pad_packed(out.hidden, out.layout)
        assert out.hidden.shape == (int(lengths.sum()), 128) and grid.hidden.shape == (5, 11, 128)
        assert torch.equal(grid.mask, mask.bool())
        assert grid.hidden[~grid.mask].abs().max() == 0  # zeros at padding
        for backend in BACKENDS:
            ref = enc.set_attention(backend)(ids, mask)  # (B, T, C)
            torch.testing.assert_close(grid.hidden[grid.mask], ref[mask.bool()], atol=1e-5, rtol=0, msg=backend)


def test_rows_equal_the_full_forward_at_those_rows():
    """MLM's masked positions (unsorted, repeated, a sequence with none) and [CLS] pooling's sequence starts."""
    torch.manual_seed(0)
    enc = Encoder(preset("bert-tiny", vocab_size=100)).eval()
    flat, lengths = _packed([5, 9, 2, 6])
    starts = sequence_starts(lengths)
    assert starts.tolist() == [0, 5, 14, 16] and torch.equal(starts, layout_from_lengths(lengths).cu_seqlens[:-1].long())
    ids, mask = _grid(flat, lengths)
    with torch.no_grad():
        full = enc.forward_packed(flat, lengths).hidden  # (N, C)
        padded = enc.set_attention("sdpa")(ids, mask)
        enc.set_attention("varlen")
        for rows in (torch.tensor([20, 3, 3, 7, 0]), starts, torch.tensor([], dtype=torch.long)):
            sparse = enc.forward_packed(flat, lengths, rows=rows)
            assert sparse.hidden.shape == (len(rows), 128)
            torch.testing.assert_close(sparse.hidden, full[rows], atol=1e-5, rtol=0)
        cls = enc.forward_packed(flat, lengths, rows=starts).hidden
    torch.testing.assert_close(cls, padded[:, 0], atol=1e-5, rtol=0)  # the padded batch's [CLS] vectors


def test_pad_packed_lays_out_per_token_outputs_too():
    """A head may run on the packed (N, C) states first (NER's token logits) and be padded after."""
    lengths = torch.tensor([2, 4, 1])
    logits = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)  # (N, L)
    grid = pad_packed(logits, layout_from_lengths(lengths))
    assert grid.hidden.shape == (3, 4, 3) and grid.mask.sum(1).tolist() == [2, 4, 1]
    assert torch.equal(grid.hidden[grid.mask], logits) and grid.hidden[1, 3].tolist() == logits[5].tolist()


def test_forward_packed_needs_the_unpadded_backend():
    enc = Encoder(preset("bert-tiny", vocab_size=100, attention="sdpa"))
    flat, lengths = _packed([3, 2])
    with pytest.raises(ValueError, match=r"set_attention\('varlen'\)"):
        enc.forward_packed(flat, lengths)
    task_body = enc.for_task_heads()  # what every task model does first
    assert task_body is enc and enc.cfg.attention == "varlen" and not any(p.requires_grad for p in enc.pooler.parameters())
    assert enc.forward_packed(flat, lengths).hidden.shape == (5, 128)


def test_minilm_forward_packed_equals_padded_forward(minilm_path, real_texts):
    """The real checkpoint on real texts of very different lengths, with token types."""
    tok = load_tokenizer(minilm_path)
    tok.enable_truncation(128)
    encs = tok.encode_batch(real_texts)  # tweets, news articles cut at 128, "" ([CLS] [SEP]), unicode
    flat = torch.tensor([i for e in encs for i in e.ids])
    types = torch.tensor([i % 2 for e in encs for i in range(len(e.ids))])  # any valid segment ids
    lengths = torch.tensor([len(e.ids) for e in encs])
    ids, mask = _grid(flat, lengths)
    type_grid, _ = _grid(types, lengths)
    enc = load(minilm_path).encoder.eval()
    with torch.no_grad():
        out = enc.set_attention("varlen").forward_packed(flat, lengths, token_type_ids=types)
        grid = pad_packed(out.hidden, out.layout)
        starts = sequence_starts(lengths)
        cls = enc.forward_packed(flat, lengths, token_type_ids=types, rows=starts).hidden
        for backend in BACKENDS:
            ref = enc.set_attention(backend)(ids, mask, token_type_ids=type_grid)
            torch.testing.assert_close(grid.hidden[grid.mask], ref[mask.bool()], atol=1e-4, rtol=0, msg=backend)
    assert lengths.max() > 4 * lengths.min()  # really ragged
    torch.testing.assert_close(cls, out.hidden[starts], atol=1e-5, rtol=0)
