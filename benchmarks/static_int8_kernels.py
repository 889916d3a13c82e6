"""Static vs dynamic int8 linears in torch on this CPU, the model's FFN shape (issue 16's "static int8 in our engine").

Dynamic (what `compression.quantize.Int8Linear` runs): activations quantized per call from their own range, fp32 out.
Static: activations quantized with a calibrated scale (here the batch's own max: the most favourable calibration),
through torch's quantized::linear (int8 out, dequantized) and oneDNN's qlinear_pointwise (fp32 out), the paths
torch's own static x86 quantization uses; the oneDNN op fed by a round/clamp/cast quantize (three passes, as the
eleventh session timed it) and by the fused quantize kernel our engine uses (`int8_static.uint8_codes`). Then the
whole feed-forward block (fc1, GELU, fc2): dynamic int8 vs our static `StaticInt8MLP` (GELU inside fc1's GEMM,
uint8 codes between the two GEMMs). Interleaved rounds, medians, relative error to fp32.

    python benchmarks/static_int8_kernels.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from encoderforge.compression.int8_linear import Int8Linear, int8_weight, quantized_engine
from encoderforge.compression.int8_static import StaticInt8Linear, StaticInt8MLP, uint8_codes
from encoderforge.hardware.cpu import cpu_info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=20)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    M, K, N = a.tokens, 384, 1536
    lin = torch.nn.Linear(K, N)
    x = torch.randn(M, K)
    ref = lin(x).detach()
    qw = int8_weight(lin.weight.detach(), reduce_range=False)
    sx = float(x.abs().max() / 127)  # symmetric activation scale, zero point 128 (uint8)
    so, zo = float((ref.max() - ref.min()) / 255), int(round(float(-ref.min() / ((ref.max() - ref.min()) / 255))))
    bias = lin.bias.detach()
    runs = {}
    for eng in ("x86", "onednn"):
        dyn = Int8Linear(lin, reduce_range=False, engine=eng)
        with quantized_engine(eng):
            packed = torch.ops.quantized.linear_prepack(qw, bias)

        def static(packed=packed, eng=eng) -> torch.Tensor:
            with quantized_engine(eng):
                qx = torch.quantize_per_tensor(x, sx, 128, torch.quint8)
                return torch.ops.quantized.linear(qx, packed, so, zo).dequantize()

        runs[f"dynamic ({eng})"] = dyn
        runs[f"static quantized::linear ({eng})"] = static
    w_scales, w_zero = qw.q_per_channel_scales().float(), torch.zeros(N, dtype=torch.long)
    packed_onednn = torch.ops.onednn.qlinear_prepack(qw.int_repr(), [M, K])

    def onednn_fp32_out() -> torch.Tensor:
        qx = torch.clamp(torch.round(x / sx) + 128, 0, 255).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise(
            qx, sx, 128, packed_onednn, w_scales, w_zero, bias, 1.0, 0, torch.float32, "none", [None], ""
        )

    def onednn_fused_quantize() -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(
            uint8_codes(x, sx, 128), sx, 128, packed_onednn, w_scales, w_zero, bias, 1.0, 0, torch.float32, "none", [None], ""
        )

    runs["static onednn.qlinear_pointwise (fp32 out), round/clamp quantize"] = onednn_fp32_out
    runs["static onednn.qlinear_pointwise (fp32 out), fused quantize (our engine)"] = onednn_fused_quantize
    # the whole feed-forward block, (M, K) -> (M, K): fc1 -> GELU -> fc2
    fc2 = torch.nn.Linear(N, K)
    h = torch.nn.functional.gelu(ref)
    mlp_ref = fc2(h).detach()
    dyn1, dyn2 = (Int8Linear(m, reduce_range=False, engine="onednn") for m in (lin, fc2))
    x_range, h_range = (float(x.min()), float(x.max())), (float(h.min()), float(h.max()))
    fused = StaticInt8MLP(StaticInt8Linear(lin, x_range, post_op="gelu", out_range=h_range), StaticInt8Linear(fc2, h_range))
    runs["FFN block: dynamic int8 (onednn) fc1, GELU, fc2"] = lambda: dyn2(torch.nn.functional.gelu(dyn1(x)))
    runs["FFN block: static int8, our engine (StaticInt8MLP)"] = lambda: fused(x)
    runs["FFN block: fp32 (MKL)"] = lambda: fc2(torch.nn.functional.gelu(lin(x)))
    runs["fp32 F.linear (MKL)"] = lambda: torch.nn.functional.linear(x, lin.weight.detach(), bias)

    def rel(k: str, out: torch.Tensor) -> float:
        want = mlp_ref if k.startswith("FFN") else ref
        return float(out.detach().sub(want).norm() / want.norm())

    err = {k: rel(k, f(x) if isinstance(f, Int8Linear) else f()) for k, f in runs.items()}
    for f in runs.values():
        for _ in range(2):
            f(x) if isinstance(f, Int8Linear) else f()
    ts: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for _ in range(a.rounds):
            for k, f in runs.items():
                t = time.perf_counter()
                f(x) if isinstance(f, Int8Linear) else f()
                ts[k].append(time.perf_counter() - t)
    gemm, block = (
        statistics.median(ts["dynamic (onednn)"]),
        statistics.median(ts["FFN block: dynamic int8 (onednn) fc1, GELU, fc2"]),
    )
    print(f"{cpu_info().describe()}; {a.threads} threads; {M} x {K} -> {N} (-> {K}); median of {a.rounds} interleaved rounds\n")
    print("| kernel | ms | x dynamic int8 (onednn), same work | GFLOP/s | rel. error to fp32 |\n|---|---:|---:|---:|---:|")
    for k, v in ts.items():
        med, ffn = statistics.median(v), k.startswith("FFN")
        flops = 2 * M * K * N * (2 if ffn else 1)
        print(f"| {k} | {med * 1e3:.2f} | {(block if ffn else gemm) / med:.2f} | {flops / med / 1e9:.0f} | {err[k]:.4f} |")


if __name__ == "__main__":
    main()
