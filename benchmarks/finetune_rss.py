"""Why fine-tuning's peak RSS grows: glibc keeps freed heap memory when every batch has a different shape.

STEPS MiniLM-L6 training steps (32 random-length R8-like sequences of 20-128 tokens, packed, AdamW), printing the
resident set size and elapsed seconds every 5 steps; with TRIM_EVERY = n > 0, libc's malloc_trim(0) returns free
heap pages to the OS after every n-th step (at the price of faulting them in again; the training loop's
`train.trim_heap_every`).

    python benchmarks/finetune_rss.py THREADS [TRIM_EVERY [STEPS [onednn]]]   (onednn: the loop's oneDNN linears)
    python benchmarks/finetune_rss.py 1            # threads=1, glibc default, 40 steps
    python benchmarks/finetune_rss.py 1 1          # malloc_trim after every step
    python benchmarks/finetune_rss.py 1 20 80      # after every 20th step, 80 steps
"""

import sys
import time

import torch

from encoderforge.model import checkpoint
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks.classification import SequenceModel
from encoderforge.tasks.sequences import SeqBatch
from encoderforge.training.fast_linear import use_onednn_linears
from encoderforge.training.memory import release_free_heap, rss_mb
from encoderforge.training.params import param_groups


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    trim_every = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    onednn = len(sys.argv) > 4 and sys.argv[4] == "onednn"
    m = SequenceModel(checkpoint.load(resolve_model("minilm-l6")).encoder, 8).train()
    if onednn:  # what training.loop.train does on CPU
        use_onednn_linears(m)
    opt = torch.optim.AdamW(param_groups(m, weight_decay=0.01), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    print("start", round(rss_mb()))
    t0 = time.perf_counter()
    for step in range(steps):
        lengths = torch.randint(20, 129, (32,), generator=g)
        ids = torch.randint(1000, 20000, (int(lengths.sum()),), generator=g)
        b = SeqBatch(ids, lengths, torch.arange(32), torch.randint(0, 8, (32,), generator=g))
        torch.nn.functional.cross_entropy(m(b), b.targets, reduction="sum").backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if trim_every and (step + 1) % trim_every == 0:
            release_free_heap()
        if step % 5 == 4:
            print(step + 1, round(rss_mb()), round(time.perf_counter() - t0, 1), flush=True)


if __name__ == "__main__":
    main()
