"""What each CPU training choice is worth: one MLM step (forward, backward, AdamW) of our packed, sparse-prediction
model under each combination of GEMM kernel (oneDNN `training/fast_linear.py` vs torch's MKL `F.linear`) and dropout
mask (`model/dropout.py` vs torch's Bernoulli dropout, attention dropout through SDPA's math path), on the same
batches. Each variant runs in its own process (one per variant per round, the variants in turn, so machine load
hits all alike); medians over all timed steps.

    python benchmarks/train_step_ablation.py --threads 2 --rounds 3 --steps 6

Data: the bundled license texts prepared with MiniLM's tokenizer (as `encoderforge bench train`), MiniLM-L6 shape,
random initialisation. Prints a Markdown table; --out writes it with the raw step times as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from encoderforge.data import datasets
from encoderforge.data.corpus import CorpusSpec, prepare_corpus
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.packing import iter_rows
from encoderforge.data.shards import load_documents
from encoderforge.model import attention as attention_mod
from encoderforge.model import dropout as dropout_mod
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks.mlm import MaskedLM, collate
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.fast_linear import train_linear_kernel, use_onednn_linears

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


def worker(a: argparse.Namespace) -> None:
    """One variant in this process: warm-up steps, then timed steps; prints RESULT <json of step seconds>."""
    kernel, drop = a.variant.split("/")
    torch.set_num_threads(a.threads)
    tok = load_tokenizer(resolve_model("minilm-l6"))
    vocab = MaskVocab.from_tokenizer(tok)
    docs = load_documents(Path(a.shards), "train", tokenizer=tok)
    stream = iter_rows(docs, a.max_len, 0)
    batches = [
        collate(docs, [next(stream) for _ in range(a.rows)], vocab, MaskingConfig(ratio=0.15), 0)
        for _ in range(a.warmup + a.steps)
    ]
    torch.manual_seed(0)
    cfg = preset(a.preset, vocab_size=tok.get_vocab_size(), max_position=max(512, a.max_len))
    model = MaskedLM(Encoder(cfg)).train()
    if kernel == "onednn":
        use_onednn_linears(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    secs = []
    with torch_dropout() if drop == "torch" else nullcontext():
        for i, b in enumerate(batches):
            t = time.perf_counter()
            F.cross_entropy(model(b.input_ids, b.lengths, b.positions), b.labels).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= a.warmup:
                secs.append(time.perf_counter() - t)
    tokens = statistics.median(b.input_ids.numel() for b in batches[a.warmup :])
    print("RESULT " + json.dumps({"secs": secs, "tokens": tokens}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one process per variant, in turn")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per process")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per process first")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--preset", default="minilm-l6")
    ap.add_argument("--out", help="directory for results.json / results.md")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--shards", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        return worker(a)
    secs: dict[str, list[float]] = {f"{k}/{d}": [] for k, d in VARIANTS}
    tokens = 0.0
    with tempfile.TemporaryDirectory(prefix="encoderforge-ablation-") as tmp:
        corpus = CorpusSpec(path=str(datasets.license_texts()[0].parent), name="licenses")
        prepare_corpus([corpus], resolve_model("minilm-l6"), Path(tmp) / "shards", eval_fraction=0.0)
        # one process per variant and round: swapping kernels inside one process slowed every variant
        for _ in range(a.rounds):
            for v in secs:
                cmd = [
                    sys.executable,
                    __file__,
                    "--variant",
                    v,
                    "--shards",
                    str(Path(tmp) / "shards"),
                    *(
                        f"--{k.replace('_', '-')}={getattr(a, k)}"
                        for k in ("threads", "steps", "warmup", "max_len", "rows", "preset")
                    ),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    sys.exit(f"{v} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(line[len("RESULT ") :])
                secs[v] += r["secs"]
                tokens = r["tokens"]
    base = statistics.median(secs["onednn/torch"])
    rows = [
        f"| {v.split('/')[0]} | {v.split('/')[1]} | {tokens / statistics.median(ts):,.0f} | {base / statistics.median(ts):.2f}x |"
        for v, ts in secs.items()
    ]
    md = "\n".join(
        [
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}; the loop's kernel here: "
            f"{train_linear_kernel()}; {a.threads} threads, {a.rows} x {a.max_len} tokens, {a.rounds} rounds x "
            f"{a.steps} timed steps per variant",
            "",
            "| GEMM kernel | dropout mask | real tokens/s | x (oneDNN, torch dropout) |",
            "|---|---|---:|---:|",
            *rows,
        ]
    )
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(md + "\n")
        (out / "results.json").write_text(
            json.dumps({"config": vars(a), "tokens_per_step": tokens, "step_seconds": secs}, indent=2)
        )


if __name__ == "__main__":
    main()
