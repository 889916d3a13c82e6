"""`encoderforge bench train`: our packed, sparse-prediction MLM step vs transformers' padded, dense one.

Same architecture, same documents, same sequences, same batch, same optimizer, in one run:
  ours: rows packed to max_len with no padding (varlen attention), decoder only on the masked positions, the
        training loop's GEMM choice (oneDNN on AVX-512 CPUs, MKL elsewhere).
  HF:   BertForMaskedLM + DataCollatorForLanguageModeling: each [CLS] piece [SEP] segment of the same rows is one
        sequence, padded to the longest in the batch, decoder on every position.
Steps alternate between the two (the machine's load hits both alike); tokens/s counts real (non-pad) tokens over
the median step time. Without --shards the bundled legal corpus (licensedcode license texts) is prepared with the
tokenizer into a temporary directory first.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from encoderforge import EncoderforgeError, require
from encoderforge.data import datasets
from encoderforge.data.corpus import CorpusSpec, prepare_corpus
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.packing import iter_rows, row_tokens
from encoderforge.data.shards import load_documents
from encoderforge.fileio import atomic_file
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks.mlm import MaskedLM, collate
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.fast_linear import train_linear_kernel, use_training_linears


def _interleaved(steps: list, batches: list[list], warmup: int) -> list[list[float]]:
    """Seconds of every timed step per implementation, alternating their steps so both see the same machine load."""
    for step, bs in zip(steps, batches):
        for b in bs[:warmup]:
            step(b)
    secs: list[list[float]] = [[] for _ in steps]
    for i in range(warmup, len(batches[0])):
        for k, (step, bs) in enumerate(zip(steps, batches)):
            t = time.perf_counter()
            step(bs[i])
            secs[k].append(time.perf_counter() - t)
    return secs


def bench_train(
    shards: str | Path | None = None,
    tokenizer: str | Path = "minilm-l6",
    *,
    preset_name: str = "minilm-l6",
    max_len: int = 128,
    rows: int = 8,
    steps: int = 10,
    warmup: int = 2,
    ratio: float = 0.15,
    threads: int = 2,
    seed: int = 0,
) -> dict:
    """Tokens/s of one optimizer step (forward, backward, AdamW) for both implementations.

    Args:
        shards: a directory from `encoderforge data prepare` made with `tokenizer`; None = prepare the bundled
            license texts into a temporary directory.
        tokenizer: tokenizer.json / vocab.txt / checkpoint directory or zoo name ("minilm-l6").
        preset_name: architecture of both models (random initialisation: speed does not depend on the weights).
        steps, warmup: timed and untimed steps per implementation (every step sees other rows).
    Returns:
        {"ours": {...}, "hf": {...}, "speedup": ratio of median step times, "padding_share_hf": pad share of
        the HF batches, "config": {...}}.
    """
    if steps < 1 or warmup < 0 or rows < 1:
        raise EncoderforgeError(
            f"bench train: steps={steps}, warmup={warmup}, rows={rows}; use steps >= 1, warmup >= 0, rows >= 1"
        )
    require("transformers", "hf")  # the baseline; fail before preparing a corpus
    tokenizer = resolve_model(str(tokenizer))
    kw: dict[str, Any] = dict(
        preset_name=preset_name, max_len=max_len, rows=rows, steps=steps, warmup=warmup, ratio=ratio, threads=threads, seed=seed
    )
    if shards is not None:
        return _bench(Path(shards), tokenizer, **kw)
    with tempfile.TemporaryDirectory(prefix="encoderforge-bench-train-") as tmp:
        corpus = CorpusSpec(path=str(datasets.license_texts()[0].parent), name="licenses")
        prepare_corpus([corpus], tokenizer, Path(tmp) / "shards", eval_fraction=0.0)
        return _bench(Path(tmp) / "shards", tokenizer, **kw)


def _bench(
    shards: Path,
    tokenizer: str | Path,
    *,
    preset_name: str,
    max_len: int,
    rows: int,
    steps: int,
    warmup: int,
    ratio: float,
    threads: int,
    seed: int,
) -> dict:
    transformers = require("transformers", "hf")
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
    use_training_linears(ours)  # what training.loop.train does on CPU (oneDNN GEMMs where they beat MKL)
    # both sides: torch's fused AdamW (what our loop builds on CPU, and transformers Trainer's default optimizer)
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4, fused=True)
    masking = MaskingConfig(ratio=ratio)
    ours_batches = [collate(docs, rb, vocab, masking, seed) for rb in row_batches]

    def ours_step(b):
        logits = ours(b.input_ids, b.lengths, b.positions)
        torch.nn.functional.cross_entropy(logits, b.labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    real_per_step = [b.input_ids.numel() for b in ours_batches[warmup:]]

    # transformers: the same segments, padded, dense decoder
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    hf = transformers.BertForMaskedLM(hf_cfg).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, mask_token="[MASK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]"
    )
    collator = transformers.DataCollatorForLanguageModeling(fast, mlm_probability=ratio, return_tensors="pt")
    hf_batches = [
        collator([{"input_ids": s.tolist()} for r in rb for s in row_tokens(docs, r, vocab.cls_id, vocab.sep_id)])
        for rb in row_batches
    ]

    def hf_step(b):
        hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    t_ours, t_hf = _interleaved([ours_step, hf_step], [ours_batches, hf_batches], warmup)
    padded = sum(b["input_ids"].numel() for b in hf_batches[warmup:])
    hf_real = sum(int(b["attention_mask"].sum()) for b in hf_batches[warmup:])
    real = sum(real_per_step)
    assert hf_real == real, (hf_real, real)  # the same tokens went through both
    tokens = statistics.median(real_per_step)
    med_ours, med_hf = statistics.median(t_ours), statistics.median(t_hf)
    return {
        "config": {
            "preset": preset_name,
            "max_len": max_len,
            "rows": rows,
            "steps": steps,
            "warmup": warmup,
            "ratio": ratio,
            "threads": threads,
            "torch": torch.__version__,
            "shards": str(shards),
            "cpu": torch.backends.cpu.get_cpu_capability(),
            "linear_kernel": train_linear_kernel(),
        },
        "ours": {"step_seconds": t_ours, "median_step_s": med_ours, "tokens_per_s": tokens / med_ours},
        "hf": {"step_seconds": t_hf, "median_step_s": med_hf, "tokens_per_s": tokens / med_hf},
        "speedup": med_hf / med_ours,
        "padding_share_hf": 1 - real / padded,
    }


def write(result: dict, out: str | Path) -> Path:
    """results.json in `out` (written atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "results.json") as f:
        json.dump(result, f, indent=2)
    return out / "results.json"
