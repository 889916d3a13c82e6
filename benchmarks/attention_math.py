"""Attention with dropout on CPU, forward + backward of one MiniLM-sized layer: the textbook math (what the eager
backend and torch's SDPA math path do: scale pass, mask pass, softmax, dropout, @ v) vs `attention.math_attention`
(one baddbmm for scale + mask, the dropout scale on the output), the same dropout masks, alternating, medians.

    python benchmarks/attention_math.py --threads 2                 # 32 sequences of 40-128 tokens, 12 heads x 32
    python benchmarks/attention_math.py --threads 2 --batch 8 --len 256
"""

import argparse
import statistics
import time

import torch

from encoderforge.model.attention import AttnContext, eager_attention, sdpa_attention


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--len", type=int, default=128, help="longest sequence; the others are 30-100%% of it")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    B, T = a.batch, a.len
    lengths = torch.randint(int(0.3 * T), T + 1, (B,))
    lengths[0] = T
    ctx = AttnContext(mask=torch.arange(T)[None] < lengths[:, None])  # (B, T) padded batch
    qkv = torch.randn(B, T, 3, a.heads, a.head_dim, requires_grad=True)
    sides = {"textbook (eager backend)": eager_attention, "math_attention (sdpa backend on CPU)": sdpa_attention}

    def run(fn):
        torch.manual_seed(1)  # the same dropout mask for both sides
        out = fn(qkv, ctx, dropout_p=a.dropout)
        out.sum().backward()
        qkv.grad = None
        return out.detach()

    outs = [run(fn) for fn in sides.values()]
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(a.rounds):
        for name, fn in sides.items():
            t = time.perf_counter()
            run(fn)
            times[name].append(time.perf_counter() - t)
    real = ctx.mask.sum().item()
    print(
        f"{B} sequences, {real} real tokens (longest {T}), {a.heads} heads x {a.head_dim}, dropout {a.dropout}, "
        f"{a.threads} threads; max abs diff of the outputs {(outs[0] - outs[1])[ctx.mask].abs().max().item():.1e}"
    )
    base = statistics.median(times["textbook (eager backend)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name}: forward + backward {1000 * med:.1f} ms (median of {a.rounds}), {base / med:.2f}x")


if __name__ == "__main__":
    main()
