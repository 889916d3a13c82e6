"""Static vs dynamic int8 linears in torch on this CPU, the model's FFN shape (issue 16's "static int8 in our engine").

Dynamic (what `compression.quantize.Int8Linear` runs): activations quantized per call from their own range, fp32 out.
Static: activations quantized with a calibrated scale (here the batch's own max: the most favourable calibration),
through torch's quantized::linear (int8 out, dequantized) and oneDNN's qlinear_pointwise (fp32 out), the paths
torch's own static x86 quantization uses. Interleaved rounds, medians, relative error to fp32.

    python benchmarks/static_int8_kernels.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from encoderforge.compression.int8_linear import Int8Linear, int8_weight, quantized_engine
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

    runs["static onednn.qlinear_pointwise (fp32 out)"] = onednn_fp32_out
    runs["fp32 F.linear (MKL)"] = lambda: torch.nn.functional.linear(x, lin.weight.detach(), bias)
    err = {k: float((f(x) if isinstance(f, Int8Linear) else f()).sub(ref).norm() / ref.norm()) for k, f in runs.items()}
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
    base = statistics.median(ts["dynamic (x86)"])
    print(f"{cpu_info().describe()}; {a.threads} threads; {M} x {K} -> {N}; median of {a.rounds} interleaved rounds\n")
    print("| kernel | ms | x dynamic (x86) | GFLOP/s | rel. error to fp32 |\n|---|---:|---:|---:|---:|")
    for k, v in ts.items():
        med = statistics.median(v)
        print(f"| {k} | {med * 1e3:.2f} | {base / med:.2f} | {2 * M * K * N / med / 1e9:.0f} | {err[k]:.4f} |")


if __name__ == "__main__":
    main()
