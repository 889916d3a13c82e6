"""fp32 GEMM throughput of the kernels available to an encoder on this CPU, for MiniLM's FFN shape.

Why: it explains the engine's `cpu_pack` choice (oneDNN pre-packed vs torch's default MKL sgemm) and gives
the ceiling the inference benchmark compares against.
Usage: python benchmarks/gemm_kernels.py --threads 1 --tokens 2048
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def gflops(fn, flops: float, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--inner", type=int, default=1536)
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    M, K, N = a.tokens, a.hidden, a.inner
    x, lin = torch.randn(M, K), torch.nn.Linear(K, N)
    flops = 2.0 * M * K * N
    from encoderforge.inference.cpu_pack import PackedLinear

    packed, packed_gelu = PackedLinear(lin), PackedLinear(lin, activation="gelu")
    rows = {}
    with torch.inference_mode():
        rows["torch F.linear (MKL sgemm)"] = gflops(lambda: torch.nn.functional.linear(x, lin.weight, lin.bias), flops, a.reps)
        rows["oneDNN pre-packed (encoderforge cpu_pack)"] = gflops(lambda: packed(x), flops, a.reps)
        rows["oneDNN pre-packed + fused GELU"] = gflops(lambda: packed_gelu(x), flops, a.reps)
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])],
        [
            numpy_helper.from_array(lin.weight.detach().t().contiguous().numpy(), "w"),
            numpy_helper.from_array(lin.bias.detach().numpy(), "b"),
        ],
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        opts,
        providers=["CPUExecutionProvider"],
    )
    xn = x.numpy().astype(np.float32)
    rows["onnxruntime MatMul+Add (MLAS)"] = gflops(lambda: sess.run(None, {"x": xn}), flops, a.reps)
    print(f"| kernel ({M}x{K} @ {K}x{N}, {a.threads} thread(s)) | GFLOP/s |\n|---|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v:.0f} |")


if __name__ == "__main__":
    main()
