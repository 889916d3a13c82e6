"""oneDNN GEMMs for training on CPU: forward, grad-input and grad-weight of every nn.Linear.

Why by hand: torch's CPU `F.linear`/`mm` go to MKL sgemm, which on AVX-512 AMD CPUs runs its generic path
(~100 GFLOP/s per core on the first development box), while the same three GEMMs through oneDNN's matmul
(`torch.ops.mkldnn._linear_pointwise`, the op Inductor emits) reach ~190-230 (measured in docs/results.md).
On an AVX2-only CPU the order flips: MKL is the faster GEMM and a whole MLM step runs 6-19% faster on it
(benchmarks/train_step_ablation.py, docs/results.md "Second machine"), and on an AMX Xeon MKL won too, so the loop
swaps only where `train_linear_kernel(model)`, timing whole forward + backward steps of the model's encoder
with each path, says "onednn".
The swap keeps the very same Parameter objects under the same names, so optimizers, state_dicts,
checkpoints and DDP see no difference.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Callable, cast

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.hardware.choose import Choice, choose
from encoderforge.model.encoder import Encoder
from encoderforge.model.padding import Unpadded, layout_from_lengths
from encoderforge.model.surgery import is_cpu_fp32_linear, replace_modules

KERNEL_ENV = "ENCODERFORGE_TRAIN_LINEAR"
KERNELS = ("auto", "onednn", "torch")


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b_t^T (+ bias) through oneDNN: a (M, K), b_t (N, K) -> (M, N)."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


class _OneDNNLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (M, in)
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.lead = bias is not None, x.shape[:-1]
        return _mm(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])  # (..., out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0]).contiguous()  # (M, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm(g, weight.t().contiguous()).view(*ctx.lead, weight.shape[1])  # (M, in)
        if ctx.needs_input_grad[1]:
            grad_w = _mm(g.t().contiguous(), x2.t().contiguous())  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(dim=0)
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Module):
    """Drop-in for nn.Linear on CPU fp32 that holds the *same* weight/bias Parameters."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or self.weight.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")
        ):
            return nn.functional.linear(x, self.weight, self.bias)  # autocast/bf16/CUDA: torch's own path
        return _OneDNNLinearFn.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# oneDNN caches one primitive per GEMM shape (1,024 by default) and training batches change shape every step:
# the cache then holds hundreds of MB that are never reused (benchmarks/finetune_rss.py ... onednn). A small cache
# keeps RSS down at no measured speed cost. oneDNN reads the variable when it first builds a primitive, so this
# only takes effect if set before the process's first oneDNN op (as at the start of training); a user's value wins.
PRIMITIVE_CACHE_CAPACITY = "64"


# The GEMMs a training step runs, per linear shape: tokens x in -> out forward, and both backward products.
# 1,024 tokens = the default step (8 rows x 128); the choice is cached per shape set, so a model measures once.
CHOICE_TOKENS = 1024
MINILM_SHAPES = ((384, 1152), (384, 384), (384, 1536), (1536, 384))  # (in, out): fused qkv, attn out, FFN in/out


def train_linear_kernel(model: nn.Module | None = None) -> str:
    """The GEMM path for CPU fp32 training: "onednn" (the swap below) or "torch" (MKL through F.linear)."""
    return train_linear_choice(model).picked


def train_linear_choice(model: nn.Module | None = None) -> Choice:
    """Measure (or read from this machine's cache) which path runs the forward and backward GEMMs of `model`'s
    linear shapes (default: MiniLM-L6's) fastest, after a numerical check of each against float64.

    Measured, not a rule on the instruction set: oneDNN ran 2.3x MKL on the AVX-512 EPYC, MKL won on the AVX2 EPYC
    and by 1.3x on the AMX Xeon (docs/results.md). The cache (encoderforge.hardware) makes every later process
    on this machine - a resumed run, the other DDP ranks once one has measured - take the same path.
    ENCODERFORGE_TRAIN_LINEAR=onednn|torch forces a path (still checked; a failing one falls back with a warning)."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise EncoderforgeError(f"{KERNEL_ENV}={os.environ[KERNEL_ENV]!r}: unknown kernel; use one of {', '.join(KERNELS)}")
    if not available():
        return Choice("train_linear", "torch", "only", note="oneDNN is not in this torch build")
    encoder = _largest_encoder(model)
    # an encoder's own shapes: every task head over the same encoder (3 labels, 20, an MLM decoder) shares its choice
    source = encoder if encoder is not None else model
    shapes = tuple(sorted(_linear_shapes(source) if source is not None else MINILM_SHAPES)) or tuple(sorted(MINILM_SHAPES))
    cands, reference = _gemm_candidates(shapes)  # sorted: the same shapes give the same cache key whoever asks
    timers = None if encoder is None else _step_timers(encoder)
    # a whole step's choice and a GEMM micro-benchmark's are different measurements: different cache keys
    key = ("train_linear/" if encoder is None else "train_step/") + ",".join(f"{i}x{o}" for i, o in shapes)
    wide = torch.backends.cpu.get_cpu_capability().upper().startswith(("AVX512", "AMX"))
    return choose(
        key,
        cands,
        reference=reference,
        tol=1e-4,
        forced=None if choice == "auto" else choice,
        forced_by=KERNEL_ENV,
        # Isolated GEMMs and whole training steps ranked the two paths differently on the AVX-512 EPYC (both within
        # 7%, docs/results.md, issue 19): so with an encoder in the model the clock runs whole forward + backward
        # steps of it (`timers`) and the GEMMs are only checked. A near-tie keeps the old instruction-set rule.
        prefer="onednn" if wide else "torch",
        tie=0.05 if timers is None else 0.02,
        timers=timers,
        rounds=7 if timers is None else 5,  # a MiniLM step is ~0.5 s on 2 cores: the first use on a machine costs ~10 s
    )


def _largest_encoder(model: nn.Module | None) -> Encoder | None:
    """The biggest encoderforge Encoder inside `model` (ELECTRA holds two), or None."""
    encoders = [] if model is None else [m for m in model.modules() if isinstance(m, Encoder)]
    return max(encoders, key=lambda e: sum(p.numel() for p in e.parameters()), default=None)


STEP_ROWS, STEP_LEN = 8, 128  # the step timed: CHOICE_TOKENS tokens as 8 packed rows of 128 (a fine-tuning batch)


def _step_timers(encoder: Encoder) -> dict[str, Callable[[], torch.Tensor]]:
    """One forward + backward of a private copy of `encoder` per GEMM path, built at its first run (a cache hit
    copies nothing). The copy keeps the user's weights, gradients and module objects untouched, and the dropout draws
    run on a forked RNG, so measuring changes nothing in the run that asked."""

    @functools.cache
    def setup() -> tuple[Encoder, torch.Tensor, Unpadded]:
        probe = copy.deepcopy(encoder).float().train().requires_grad_(True)  # timed as if all of it trains (a frozen encoder too)
        restore_linears(probe)
        if not probe.unpadded:
            probe.set_attention("varlen")
        vocab = probe.cfg.vocab_size
        gen = torch.Generator().manual_seed(0)
        length = min(STEP_LEN, probe.cfg.max_position)  # rows no longer than the model's positions
        rows = max(1, STEP_ROWS * STEP_LEN // length)
        ids = torch.randint(min(1000, vocab - 1), vocab, (rows * length,), generator=gen)
        return probe, ids, layout_from_lengths(torch.full((rows,), length))

    def step(kernel: str) -> torch.Tensor:
        probe, ids, layout = setup()
        swapped = use_onednn_linears(probe) if kernel == "onednn" else 0
        try:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                hidden = probe.forward_unpadded(ids, layout)
                hidden.square().mean().backward()
        finally:
            if swapped:
                restore_linears(probe)
            probe.zero_grad(set_to_none=True)
        return hidden.detach()

    return {"onednn": lambda: step("onednn"), "torch": lambda: step("torch")}


def _linear_shapes(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Distinct (in, out) shapes of the CPU fp32 linears the swap would touch, biggest first (at most 6)."""
    shapes = {
        (int(m.in_features), int(m.out_features))  # type: ignore[arg-type]
        for m in model.modules()
        if is_cpu_fp32_linear(m) or isinstance(m, OneDNNLinear)
    }
    return tuple(sorted(shapes, key=lambda s: -s[0] * s[1])[:6])


def _gemm_candidates(shapes) -> tuple[dict[str, Callable[[], torch.Tensor]], Callable[[], torch.Tensor]]:
    """One forward + backward of every shape on fixed random inputs, per path; and the float64 result. The inputs
    are made at the first run: a cache hit makes none."""

    @functools.cache
    def data() -> list[tuple[torch.Tensor, ...]]:
        gen = torch.Generator().manual_seed(0)
        return [
            (
                torch.randn(CHOICE_TOKENS, i, generator=gen),
                torch.randn(o, i, generator=gen) / i**0.5,
                torch.randn(o, generator=gen),
                torch.randn(CHOICE_TOKENS, o, generator=gen),
            )
            for i, o in shapes
        ]

    def run(fn, dtype=torch.float32) -> torch.Tensor:
        outs = []
        for x, w, b, g in data():
            x, w, b = (t.detach().to(dtype).requires_grad_() for t in (x, w, b))  # fresh leaves: no grad carried over
            y = fn(x, w, b)
            y.backward(g.to(dtype))
            outs += [y.detach().flatten(), x.grad.flatten(), w.grad.flatten(), b.grad.flatten()]  # type: ignore[union-attr]
        return torch.cat(outs)

    cands = {"onednn": lambda: run(_OneDNNLinearFn.apply), "torch": lambda: run(nn.functional.linear)}
    return cands, lambda: run(nn.functional.linear, torch.float64)


def use_training_linears(model: nn.Module) -> int:
    """What the training loop does on CPU: the oneDNN swap where `train_linear_kernel(model)` picks it; returns how
    many linears were swapped (0 = torch's own path)."""
    return use_onednn_linears(model) if train_linear_kernel(model) == "onednn" else 0


def use_onednn_linears(model: nn.Module) -> int:
    """Swap every CPU fp32 nn.Linear of `model` in place for a OneDNNLinear; returns how many were swapped."""
    if not available():
        return 0
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", PRIMITIVE_CACHE_CAPACITY)
    return replace_modules(model, lambda _, m: is_cpu_fp32_linear(m), lambda m: OneDNNLinear(cast(nn.Linear, m)))


def restore_linears(model: nn.Module) -> int:
    """Undo `use_onednn_linears`: plain nn.Linear modules around the same Parameters; returns how many."""
    return replace_modules(model, lambda _, m: isinstance(m, OneDNNLinear), _plain_linear)


def _plain_linear(module: nn.Module) -> nn.Linear:
    m = cast(OneDNNLinear, module)  # the predicate selected OneDNNLinear modules only
    lin = nn.Linear(
        m.in_features, m.out_features, bias=m.bias is not None, device="meta"
    )  # no throwaway allocation: the parameters are replaced next
    lin.weight, lin.bias = m.weight, m.bias
    return lin
