"""`bench train`'s yardsticks: the FLOPs a training step executes and the GEMM ceiling of this CPU, so a step time
becomes "% of this CPU's peak for that precision" (model FLOPs utilisation against a measured, not a datasheet, peak).

FLOPs: a forward's matrix products (2 per multiply-add) times 3 for forward + backward (backward computes two
products per forward one: the gradients of the input and of the weight; Kaplan et al. 2020, "Scaling Laws", 2.1).
Elementwise ops, norms and softmax are left out, as is usual. The ceiling: the FFN's first GEMM (the biggest
in the layer) at one step's tokens, through MKL (`F.linear`) and oneDNN (`_linear_pointwise`), the faster of
both in the step's dtype, timed between the steps of the same run (a shared machine's load moves both).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from encoderforge.model.config import EncoderConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def step_flops(cfg: EncoderConfig, seq_lens: Sequence[int], predicted: int, last_queries: Sequence[int] | None = None) -> float:
    """FLOPs of one training step (forward + backward) over sequences of `seq_lens` tokens (padding included
    where the batch is padded), with the MLM decoder on `predicted` positions.

    Args:
        cfg: the encoder's architecture.
        seq_lens: tokens per sequence as the attention sees them (a padded batch: B times its padded length).
        predicted: positions the MLM head (dense + tied decoder) runs on.
        last_queries: per sequence, the queries the last layer runs (sparse prediction: the masked positions);
            None = every token.
    """
    H, inter = cfg.hidden_size, cfg.intermediate_size
    n = sum(seq_lens)
    sq = sum(L * L for L in seq_lens)
    per_token = 2 * (4 * H * H + 2 * H * inter)  # qkv (3 H^2) + attention output (H^2) + FFN in and out (2 H I)
    flops = (cfg.num_layers - 1) * (n * per_token + 4 * H * sq)  # + q k^T and p v: 2 L^2 H each
    if last_queries is None:
        flops += n * per_token + 4 * H * sq
    else:  # keys and values for every token, the rest for the queries only
        r = sum(last_queries)
        flops += 2 * n * 3 * H * H + 2 * r * (H * H + 2 * H * inter) + 4 * H * sum(q * L for q, L in zip(last_queries, seq_lens))
    flops += 2 * predicted * (H * H + H * cfg.vocab_size)  # MLM transform + tied decoder
    return 3.0 * flops


class GemmCeiling:
    """The FFN GEMM (tokens x hidden) @ (hidden x intermediate) in one precision, through MKL and oneDNN.

    Called once per round of `bench train`'s interleaved steps (so it sees the machine's load as the steps do):
    each call times `reps` runs of each kernel and keeps the best, and the round's ceiling is the faster kernel."""

    def __init__(self, tokens: int, cfg: EncoderConfig, precision: str, *, reps: int = 3):
        dtype = DTYPES[precision]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(tokens, cfg.hidden_size, generator=gen).to(dtype)  # (M, K)
        w = torch.randn(cfg.intermediate_size, cfg.hidden_size, generator=gen).to(dtype)  # (N, K)
        b = torch.randn(cfg.intermediate_size, generator=gen).to(dtype)
        self.kernels: dict[str, Callable[[], torch.Tensor]] = {"mkl": lambda: F.linear(x, w, b)}
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            self.kernels["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        self.precision, self.reps = precision, reps
        self.shape = [tokens, cfg.hidden_size, cfg.intermediate_size]
        self.flops = 2.0 * tokens * cfg.hidden_size * cfg.intermediate_size
        self.rounds: dict[str, list[float]] = {k: [] for k in self.kernels}  # GFLOP/s per kernel per call

    @torch.no_grad()
    def __call__(self, _batch: object = None) -> None:
        for name, fn in self.kernels.items():
            best = float("inf")
            for _ in range(self.reps):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            self.rounds[name].append(self.flops / best / 1e9)

    def per_round(self) -> list[float]:
        """GFLOP/s of the faster kernel in each timed round (the warmup rounds dropped by the caller)."""
        return [max(r) for r in zip(*self.rounds.values())]

    def report(self, warmup: int) -> dict[str, Any]:
        """Median over the timed rounds, per kernel and of each round's best ("gflops")."""
        by_kernel = {k: statistics.median(v[warmup:]) for k, v in self.rounds.items()}
        return {
            "precision": self.precision,
            "shape": self.shape,
            "gflops": statistics.median(self.per_round()[warmup:]),
            "kernel": max(by_kernel, key=lambda k: by_kernel[k]),
            "by_kernel": by_kernel,
        }


def utilisation(flops: float, step_s: Sequence[float], ceiling_gflops: Sequence[float]) -> dict[str, float]:
    """An arm's FLOPs per step, GFLOP/s at the median step time, and % of peak: the median over rounds of that
    round's GFLOP/s over the same round's ceiling (so a load spike slows both sides of the ratio alike)."""
    pct = statistics.median(100.0 * flops / t / 1e9 / c for t, c in zip(step_s, ceiling_gflops))
    return {"flops_per_step": flops, "gflops": flops / statistics.median(step_s) / 1e9, "pct_of_peak": pct}


ARMS = {"ours": "ours", "hf": "transformers fp32", "hf_bf16": "transformers bf16 autocast"}


def summary(result: dict[str, Any]) -> str:
    """A markdown table of the arms, with precision, kernel, CPU and ceilings under it."""
    c = result["config"]
    lines = [
        "| arm | precision | median step s | real tokens/s | GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in ARMS.items():
        if key in result:
            a = result[key]
            lines.append(
                f"| {label} | {a['precision']} | {a['median_step_s']:.3f} | {a['tokens_per_s']:,.0f} | {a['gflops']:.0f} | "
                f"{a['pct_of_peak']:.1f} |"
            )
    ceil = ", ".join(
        f"{p} {v['gflops']:.0f} GFLOP/s ({v['kernel']}; " + ", ".join(f"{k} {g:.0f}" for k, g in v["by_kernel"].items()) + ")"
        for p, v in result["ceiling"].items()
    )
    speed = f"ours {result['speedup']:.2f}x transformers fp32"
    if "speedup_vs_hf_bf16" in result:
        speed += f", {result['speedup_vs_hf_bf16']:.2f}x transformers bf16"
    lines += [
        "",
        f"{speed}; transformers batches {result['padding_share_hf']:.1%} padding.",
        f"Precision {c['precision']}, our linear kernel {c['linear_kernel']} (fp32 path; bf16 autocast runs torch's), "
        f"CPU {c['cpu']}, {c['threads']} threads, torch {c['torch']}.",
        f"GEMM ceiling {tuple(result['ceiling'].values())[0]['shape']} (tokens, hidden, intermediate): {ceil}.",
    ]
    return "\n".join(lines) + "\n"
