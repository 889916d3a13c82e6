"""`encoderforge bench train`: our packed, sparse-prediction MLM step vs transformers' padded, dense one.

Same architecture, same documents, same sequences, same batch, same optimizer, in one run:
  ours: rows packed to max_len with no padding (varlen attention), decoder only on the masked positions, the
        training loop's GEMM choice (oneDNN or MKL, measured on the model's shapes: training.fast_linear).
  HF:   BertForMaskedLM + DataCollatorForLanguageModeling: each [CLS] piece [SEP] segment of the same rows is one
        sequence, padded to the longest in the batch, decoder on every position.
With precision="bf16" our step runs under bf16 autocast (fp32 master weights, as the training loop does) and a
third arm, transformers under the same autocast, joins the run; transformers fp32 stays the baseline.
Steps alternate between the arms (the machine's load hits all alike); tokens/s counts real (non-pad) tokens over
the median step time, and "% of peak" is each arm's executed FLOPs per second over the GEMM ceiling of its
precision, measured in the same run (bench_ceiling_train.py). Without --shards the bundled legal corpus (licensedcode license texts) is prepared with the
tokenizer into a temporary directory first.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch

from encoderforge import EncoderforgeError, require
from encoderforge.data import datasets
from encoderforge.data.corpus import CorpusSpec, prepare_corpus
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.packing import iter_rows, row_tokens
from encoderforge.data.shards import load_documents
from encoderforge.fileio import atomic_file
from encoderforge.hardware.cpu import cpu_info
from encoderforge.model.config import EncoderConfig, preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.zoo import resolve_model
from encoderforge.recipes.bench_ceiling_train import GemmCeiling, step_flops, summary, utilisation
from encoderforge.tasks.mlm import MaskedLM, MLMBatch, collate
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.fast_linear import train_linear_kernel, use_training_linears
from encoderforge.training.precision import check_precision


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
    precision: Literal["fp32", "bf16"] = "fp32",
) -> dict:
    """Tokens/s of one optimizer step (forward, backward, AdamW) for both implementations.

    Args:
        shards: a directory from `encoderforge data prepare` made with `tokenizer`; None = prepare the bundled
            license texts into a temporary directory.
        tokenizer: tokenizer.json / vocab.txt / checkpoint directory or zoo name ("minilm-l6").
        preset_name: architecture of both models (random initialisation: speed does not depend on the weights).
        steps, warmup: timed and untimed steps per implementation (every step sees other rows).
        precision: "fp32", or "bf16": our step under bf16 autocast, plus transformers under bf16 autocast (needs a
            CPU with AVX512-BF16 or AMX).
    Returns:
        {"ours": {...}, "hf": {...} (transformers fp32), "hf_bf16": {...} (bf16 only), each with median_step_s,
        tokens_per_s, flops_per_step, gflops, pct_of_peak; "speedup": HF fp32 / ours median step time,
        "speedup_vs_hf_bf16" (bf16 only), "padding_share_hf", "ceiling": {precision: GEMM ceiling},
        "config": {..., "precision", "linear_kernel", "cpu"}}.
    """
    if steps < 1 or warmup < 0 or rows < 1:
        raise EncoderforgeError(
            f"bench train: steps={steps}, warmup={warmup}, rows={rows}; use steps >= 1, warmup >= 0, rows >= 1"
        )
    if precision not in ("fp32", "bf16"):
        raise EncoderforgeError(f"bench train: precision={precision!r}; use fp32 or bf16")
    check_precision(precision, "cpu", field="bench train --precision", fix="use --precision fp32")
    require("transformers", "hf")  # the baseline; fail before preparing a corpus
    tokenizer = resolve_model(str(tokenizer))
    kw: dict[str, Any] = dict(
        preset_name=preset_name,
        max_len=max_len,
        rows=rows,
        steps=steps,
        warmup=warmup,
        ratio=ratio,
        threads=threads,
        seed=seed,
        precision=precision,
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
    precision: str,
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
    swapped = use_training_linears(ours)  # what training.loop.train does on CPU (oneDNN GEMMs where they beat MKL)
    # both sides: torch's fused AdamW (what our loop builds on CPU, and transformers Trainer's default optimizer)
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4, fused=True)
    masking = MaskingConfig(ratio=ratio)
    ours_batches = [collate(docs, rb, vocab, masking, seed) for rb in row_batches]

    bf16 = precision == "bf16"

    def ours_step(b):
        with _autocast(bf16):  # forward and loss, as training.loop does; backward and AdamW outside, in fp32
            loss = torch.nn.functional.cross_entropy(ours(b.input_ids, b.lengths, b.positions), b.labels)
        loss.backward()
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
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, mask_token="[MASK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]"
    )
    collator = transformers.DataCollatorForLanguageModeling(fast, mlm_probability=ratio, return_tensors="pt")
    hf_batches = [
        collator([{"input_ids": s.tolist()} for r in rb for s in row_tokens(docs, r, vocab.cls_id, vocab.sep_id)])
        for rb in row_batches
    ]
    arms = {"ours": ours_step, "hf": _hf_step(transformers, hf_cfg, seed, bf16=False)}
    if bf16:
        arms["hf_bf16"] = _hf_step(transformers, hf_cfg, seed, bf16=True)
    # the yardstick of each precision, timed in every round between the steps: the FFN GEMM at one step's tokens
    ceilings = {p: GemmCeiling(rows * max_len, cfg, p) for p in (["fp32", "bf16"] if bf16 else ["fp32"])}
    calls = [*arms.values(), *ceilings.values()]
    secs = _interleaved(calls, [ours_batches] + [hf_batches] * (len(arms) - 1) + [ours_batches] * len(ceilings), warmup)
    times = dict(zip(arms, secs))
    padded = sum(b["input_ids"].numel() for b in hf_batches[warmup:])
    hf_real = sum(int(b["attention_mask"].sum()) for b in hf_batches[warmup:])
    real = sum(real_per_step)
    assert hf_real == real, (hf_real, real)  # the same tokens went through both
    tokens = statistics.median(real_per_step)
    # executed FLOPs: ours on real tokens with sparse prediction, transformers on its padded batch, dense decoder
    hf_flops = statistics.median(_hf_flops(cfg, b["input_ids"].shape) for b in hf_batches[warmup:])
    flops = {"ours": statistics.median(_ours_flops(cfg, b) for b in ours_batches[warmup:]), "hf": hf_flops, "hf_bf16": hf_flops}
    arm_precision = {"ours": precision, "hf": "fp32", "hf_bf16": "bf16"}
    report: dict[str, dict[str, Any]] = {}
    for arm, t in times.items():
        med = statistics.median(t)
        report[arm] = {
            "precision": arm_precision[arm],
            "step_seconds": t,
            "median_step_s": med,
            "tokens_per_s": tokens / med,
            **utilisation(flops[arm], t, ceilings[arm_precision[arm]].per_round()[warmup:]),
        }
    result = {
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
            "precision": precision,
            "cpu": cpu_info().describe(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "linear_kernel": train_linear_kernel(ours),  # the fp32 GEMM path chosen for this model's shapes
            "linears_swapped": swapped,
        },
        **report,
        "speedup": report["hf"]["median_step_s"] / report["ours"]["median_step_s"],
        "padding_share_hf": 1 - real / padded,
        "ceiling": {p: c.report(warmup) for p, c in ceilings.items()},
    }
    if bf16:
        result["speedup_vs_hf_bf16"] = report["hf_bf16"]["median_step_s"] / report["ours"]["median_step_s"]
    return result


def _autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _hf_step(transformers: Any, hf_cfg: Any, seed: int, *, bf16: bool):
    """One transformers BertForMaskedLM training step (fused AdamW), under bf16 autocast if `bf16`."""
    torch.manual_seed(seed)
    hf = transformers.BertForMaskedLM(hf_cfg).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)

    def step(b):
        with _autocast(bf16):
            loss = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    return step


def _hf_flops(cfg: EncoderConfig, shape: torch.Size) -> float:
    """FLOPs of a transformers step on a (B, T) padded batch: every position, padding included, in every layer and
    in the decoder."""
    B, T = shape
    return step_flops(cfg, [T] * B, B * T)


def _ours_flops(cfg: EncoderConfig, b: MLMBatch) -> float:
    """FLOPs of our step on batch `b`: real tokens only, the last layer's queries and the decoder on the masked
    positions (sparse prediction). Attention's (B, max_seqlen) grid padding is not counted: useful FLOPs."""
    seq = torch.bucketize(b.positions, b.lengths.long().cumsum(0), right=True)  # (M,) segment of each masked position
    queries = torch.bincount(seq, minlength=len(b.lengths)).tolist()
    return step_flops(cfg, b.lengths.tolist(), len(b.positions), queries)


def write(result: dict, out: str | Path) -> Path:
    """results.json and results.md (the summary table) in `out` (written atomically); returns results.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "results.json") as f:
        json.dump(result, f, indent=2)
    with atomic_file(out / "results.md") as f:
        f.write(summary(result))
    return out / "results.json"
