"""Why fine-tuning's peak RSS grows: glibc keeps freed heap memory when every batch has a different shape.

40 MiniLM-L6 training steps (32 random-length R8-like sequences of 20-128 tokens, packed, AdamW), printing the
resident set size and elapsed seconds every 5 steps; with `trim`, libc's malloc_trim(0) returns free heap pages
to the OS after every step (at the price of faulting them in again).

    python benchmarks/finetune_rss.py 1          # threads=1, glibc default
    python benchmarks/finetune_rss.py 1 trim     # threads=1, malloc_trim after every step
"""

import ctypes
import sys
import time

import torch

from encoderforge.model import checkpoint
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks.classification import SequenceModel
from encoderforge.tasks.sequences import SeqBatch
from encoderforge.training.params import param_groups


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    trim = len(sys.argv) > 2 and sys.argv[2] == "trim"
    libc = ctypes.CDLL("libc.so.6")
    m = SequenceModel(checkpoint.load(resolve_model("minilm-l6")).encoder, 8).train()
    opt = torch.optim.AdamW(param_groups(m, weight_decay=0.01), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    print("start", round(rss_mb()))
    t0 = time.perf_counter()
    for step in range(40):
        lengths = torch.randint(20, 129, (32,), generator=g)
        ids = torch.randint(1000, 20000, (int(lengths.sum()),), generator=g)
        b = SeqBatch(ids, lengths, torch.arange(32), torch.randint(0, 8, (32,), generator=g))
        torch.nn.functional.cross_entropy(m(b), b.targets, reduction="sum").backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if trim:
            libc.malloc_trim(0)
        if step % 5 == 4:
            print(step + 1, round(rss_mb()), round(time.perf_counter() - t0, 1), flush=True)


if __name__ == "__main__":
    main()
