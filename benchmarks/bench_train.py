"""Training-step throughput: our packed, sparse-prediction MLM step vs transformers' padded, dense one.

Same architecture, same documents, same sequences, same batch, same optimizer, in one run:
  ours: rows packed to max_len with no padding (varlen attention), decoder only on the masked positions.
  HF:   BertForMaskedLM + DataCollatorForLanguageModeling: each [CLS] piece [SEP] segment of the same rows is one
        sequence, padded to the longest in the batch, decoder on every position.
Tokens/s counts real (non-pad) tokens. Example:

    python benchmarks/bench_train.py --shards /tmp/pt/legal --tokenizer MINILM_DIR --preset minilm-l6 --rows 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from encoderforge.data.corpus import load_documents
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.packing import iter_rows, row_tokens
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.training.fast_linear import use_onednn_linears
from encoderforge.tasks.mlm import MaskedLM, collate
from encoderforge.tokenization import load_tokenizer


def _interleaved(steps: list, batches: list[list], warmup: int) -> list[float]:
    """Seconds per implementation, alternating their steps so both see the same machine load (shared CPUs)."""
    for step, bs in zip(steps, batches):
        for b in bs[:warmup]:
            step(b)
    secs = [0.0] * len(steps)
    for i in range(warmup, len(batches[0])):
        for k, (step, bs) in enumerate(zip(steps, batches)):
            t = time.perf_counter()
            step(bs[i])
            secs[k] += time.perf_counter() - t
    return secs


def bench_train(shards: str, tokenizer: str, *, preset_name: str = "bert-tiny", max_len: int = 128, rows: int = 8,
                steps: int = 10, warmup: int = 2, ratio: float = 0.15, threads: int = 2, seed: int = 0) -> dict:
    """Tokens/s of one optimizer step (forward, backward, AdamW) for both implementations.

    Returns:
        {"ours": {...}, "hf": {...}, "speedup": ours/hf tokens/s, "padding_share_hf": pad share of the HF batches}.
    """
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    torch.set_num_threads(threads)
    tok = load_tokenizer(tokenizer)
    vocab = MaskVocab.from_tokenizer(tok)
    docs = load_documents(shards, "train", tokenizer=tok)
    stream = iter_rows(docs, max_len, seed)
    row_batches = [[next(stream) for _ in range(rows)] for _ in range(steps + warmup)]
    cfg = preset(preset_name, vocab_size=tok.get_vocab_size(), max_position=max(512, max_len))

    # ours: packed rows, sparse prediction
    torch.manual_seed(seed)
    ours = MaskedLM(Encoder(cfg)).train()
    use_onednn_linears(ours)  # what training.loop.train does on CPU (same Parameters, oneDNN GEMMs)
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4)
    masking = MaskingConfig(ratio=ratio)
    ours_batches = [collate(docs, rb, vocab, masking, seed) for rb in row_batches]

    def ours_step(b):
        logits = ours(b.input_ids, b.lengths, b.positions)
        torch.nn.functional.cross_entropy(logits, b.labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    real = sum(b.input_ids.numel() for b in ours_batches[warmup:])

    # transformers: the same segments, padded, dense decoder
    hf_cfg = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                        max_position_embeddings=cfg.max_position, attn_implementation="sdpa")
    torch.manual_seed(seed)
    hf = BertForMaskedLM(hf_cfg).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, mask_token="[MASK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", unk_token="[UNK]")
    collator = DataCollatorForLanguageModeling(fast, mlm_probability=ratio, return_tensors="pt")
    hf_batches = [collator([{"input_ids": s.tolist()} for r in rb for s in row_tokens(docs, r, vocab.cls_id, vocab.sep_id)])
                  for rb in row_batches]

    def hf_step(b):
        hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    t_ours, t_hf = _interleaved([ours_step, hf_step], [ours_batches, hf_batches], warmup)
    padded = sum(b["input_ids"].numel() for b in hf_batches[warmup:])
    hf_real = sum(int(b["attention_mask"].sum()) for b in hf_batches[warmup:])
    assert hf_real == real, (hf_real, real)  # the same tokens went through both
    return {"config": {"preset": preset_name, "max_len": max_len, "rows": rows, "steps": steps, "ratio": ratio,
                       "threads": threads, "torch": torch.__version__},
            "ours": {"seconds": t_ours, "tokens_per_s": real / t_ours},
            "hf": {"seconds": t_hf, "tokens_per_s": real / t_hf},
            "speedup": t_hf / t_ours, "padding_share_hf": 1 - real / padded}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--preset", default="bert-tiny")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(json.dumps(bench_train(a.shards, a.tokenizer, preset_name=a.preset, max_len=a.max_len, rows=a.rows,
                                 steps=a.steps, threads=a.threads), indent=2))
