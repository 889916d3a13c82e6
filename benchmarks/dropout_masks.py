"""Cost of a dropout keep-mask on CPU: torch's Bernoulli (what F.dropout draws) vs model/dropout.keep_mask, and of
the whole dropout (mask + scale) both ways, for the shapes of a MiniLM-L6 training step (hidden states, FFN
activations, attention probabilities). Medians of --reps calls.

    python benchmarks/dropout_masks.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from encoderforge.model.dropout import dropout, keep_mask


def ms(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {a.threads} threads, p = 0.1, ms per call\n")
    print("| shape | torch bernoulli_ mask | keep_mask | F.dropout | model.dropout |")
    print("|---|---:|---:|---:|---:|")
    for shape, what in [
        ((1024, 384), "hidden, 1,024 tokens"),
        ((1024, 1536), "FFN, 1,024 tokens"),
        ((8, 12, 128, 128), "attention probs, 8 x 128"),
        ((32, 12, 128, 128), "attention probs, 32 x 128"),
    ]:
        x = torch.randn(shape)
        cells = [
            ms(lambda: torch.empty_like(x).bernoulli_(0.9), a.reps),
            ms(lambda: keep_mask(shape, 0.1), a.reps),
            ms(lambda: F.dropout(x, 0.1, True), a.reps),
            ms(lambda: dropout(x, 0.1), a.reps),
        ]
        print(f"| {what} {tuple(shape)} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
