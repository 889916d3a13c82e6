"""What each CPU training choice is worth: one MLM step (forward, backward, AdamW) of our packed, sparse-prediction
model under each combination of GEMM kernel (oneDNN `training/fast_linear.py` vs torch's MKL `F.linear`) and dropout
mask (`model/dropout.py` vs torch's Bernoulli dropout, attention dropout through SDPA's math path), interleaved
step by step on the same batches so machine load hits all alike; medians.

    python benchmarks/train_step_ablation.py --threads 2 --steps 10

Data: the bundled license texts prepared with MiniLM's tokenizer (as `encoderforge bench train`), MiniLM-L6 shape,
random initialisation. Prints a Markdown table; --out writes it with the raw step times as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from encoderforge import datasets
from encoderforge.data.corpus import CorpusSpec, load_documents, prepare_corpus
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.packing import iter_rows
from encoderforge.model import attention as attention_mod
from encoderforge.model import dropout as dropout_mod
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks.mlm import MaskedLM, collate
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.fast_linear import restore_linears, train_linear_kernel, use_onednn_linears

VARIANTS = [("torch", "ours"), ("onednn", "ours"), ("torch", "torch"), ("onednn", "torch")]


@contextmanager
def torch_dropout():
    """Route the encoder's dropout and attention back to torch's own (Bernoulli masks, SDPA with dropout_p)."""
    saved = dropout_mod.dropout, attention_mod.dropout, attention_mod.attend
    plain = lambda x, p, training=True: F.dropout(x, p, training)  # noqa: E731
    sdpa = lambda q, k, v, mask, p: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # noqa: E731
    dropout_mod.dropout, attention_mod.dropout, attention_mod.attend = plain, plain, sdpa
    try:
        yield
    finally:
        dropout_mod.dropout, attention_mod.dropout, attention_mod.attend = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--preset", default="minilm-l6")
    ap.add_argument("--out", help="directory for results.json / results.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tokenizer = resolve_model("minilm-l6")
    tok = load_tokenizer(tokenizer)
    vocab = MaskVocab.from_tokenizer(tok)
    with tempfile.TemporaryDirectory(prefix="encoderforge-ablation-") as tmp:
        corpus = CorpusSpec(path=str(datasets.license_texts()[0].parent), name="licenses")
        prepare_corpus([corpus], tokenizer, Path(tmp) / "shards", eval_fraction=0.0)
        docs = load_documents(Path(tmp) / "shards", "train", tokenizer=tok)
        stream = iter_rows(docs, a.max_len, 0)
        batches = [collate(docs, [next(stream) for _ in range(a.rows)], vocab, MaskingConfig(ratio=0.15), 0)
                   for _ in range(a.warmup + a.steps)]
    torch.manual_seed(0)
    cfg = preset(a.preset, vocab_size=tok.get_vocab_size(), max_position=max(512, a.max_len))
    model = MaskedLM(Encoder(cfg)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(b, kernel: str, drop: str) -> float:
        use_onednn_linears(model) if kernel == "onednn" else restore_linears(model)
        t = time.perf_counter()
        if drop == "torch":
            with torch_dropout():
                logits = model(b.input_ids, b.lengths, b.positions)
        else:
            logits = model(b.input_ids, b.lengths, b.positions)
        F.cross_entropy(logits, b.labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    secs: dict[tuple[str, str], list[float]] = {v: [] for v in VARIANTS}
    for i, b in enumerate(batches):
        for v in VARIANTS:
            s = step(b, *v)
            if i >= a.warmup:
                secs[v].append(s)
    tokens = statistics.median(b.input_ids.numel() for b in batches[a.warmup:])
    base = statistics.median(secs[("onednn", "torch")])
    rows = [f"| {k} | {d} | {tokens / statistics.median(ts):,.0f} | {base / statistics.median(ts):.2f}x |"
            for (k, d), ts in secs.items()]
    md = "\n".join([f"CPU capability {torch.backends.cpu.get_cpu_capability()}; the loop's kernel here: "
                    f"{train_linear_kernel()}; {a.threads} threads, {a.rows} x {a.max_len} tokens, {a.steps} steps",
                    "", "| GEMM kernel | dropout mask | real tokens/s | x (oneDNN, torch dropout) |",
                    "|---|---|---:|---:|", *rows])
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(md + "\n")
        (out / "results.json").write_text(json.dumps({"config": vars(a), "tokens_per_step": tokens,
                                                      "step_seconds": {f"{k}/{d}": ts for (k, d), ts in secs.items()}},
                                                     indent=2))


if __name__ == "__main__":
    main()
