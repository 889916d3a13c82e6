"""Why fine-tuning's peak RSS grows, and what holds it down: MiniLM-L6 training steps on random token batches
(32 sequences of --min-len..--max-len tokens, packed, AdamW), printing the resident set size in MB and the elapsed
seconds every 5 steps.

  --trim-every N        libc malloc_trim(0) after every N-th step (the loop's `train.trim_heap_every`; 0 = never)
  --onednn              the training loop's oneDNN linears (training/fast_linear.py) instead of torch's
  --mmap-threshold-kb K glibc mallopt(M_MMAP_THRESHOLD, K KiB): allocations above it are mmapped and returned to
                        the OS when freed (0 = glibc's default, a threshold that rises up to 32 MB on its own)

    python benchmarks/finetune_rss.py --threads 1 --steps 40                    # glibc default, torch linears
    python benchmarks/finetune_rss.py --threads 1 --trim-every 20 --steps 60 --onednn
    python benchmarks/finetune_rss.py --threads 1 --steps 60 --onednn --min-len 128 --mmap-threshold-kb 1024
"""

import argparse
import resource
import time

import torch

from encoderforge.model import checkpoint
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks.classification import SequenceModel
from encoderforge.tasks.sequences import SeqBatch
from encoderforge.training.fast_linear import use_onednn_linears
from encoderforge.training.memory import release_free_heap, rss_mb, set_mmap_threshold
from encoderforge.training.params import param_groups


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trim-every", type=int, default=0)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--onednn", action="store_true")
    p.add_argument("--min-len", type=int, default=20)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--mmap-threshold-kb", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.mmap_threshold_kb:
        set_mmap_threshold(a.mmap_threshold_kb * 1024)
    m = SequenceModel(checkpoint.load(resolve_model("minilm-l6")).encoder, 8).train()
    if a.onednn:  # what training.loop.train does on CPU
        use_onednn_linears(m)
    opt = torch.optim.AdamW(param_groups(m, weight_decay=0.01), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    print("start", round(rss_mb()))
    t0 = time.perf_counter()
    for step in range(a.steps):
        lengths = torch.randint(a.min_len, a.max_len + 1, (32,), generator=g)
        ids = torch.randint(1000, 20000, (int(lengths.sum()),), generator=g)
        b = SeqBatch(ids, lengths, torch.arange(32), torch.randint(0, 8, (32,), generator=g))
        torch.nn.functional.cross_entropy(m(b), b.targets, reduction="sum").backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if a.trim_every and (step + 1) % a.trim_every == 0:
            release_free_heap()
        if step % 5 == 4:
            print(step + 1, round(rss_mb()), round(time.perf_counter() - t0, 1), flush=True)
    print("peak", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


if __name__ == "__main__":
    main()
