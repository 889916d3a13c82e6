"""Which int8 range keeps MiniLM's sentence vectors on THIS CPU: torch's fbgemm dynamic int8 linears with
  8-bit weights + 8-bit activations  (full range: exact on AVX512-VNNI, can saturate VPMADDUBSW's int16 without it),
  8-bit weights + 7-bit activations  (torch's own `reduce_range`),
  7-bit weights + 8-bit activations  (ONNX Runtime's `reduce_range`; `Int8Linear(reduce_range=True)`, our default
                                      on CPUs without VNNI).
Prints mean / min cosine of mean-pooled vectors to fp32 per text set, and the relative error of one random layer
whose inputs fill the 8-bit range (where saturation shows).

    python benchmarks/int8_ranges.py --n 256 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
from torch import nn

from encoderforge.compression.quantize import Int8Linear, cpu_has_vnni, int8_fidelity
from encoderforge.inference.onnx_export import encode_padded
from encoderforge.model.checkpoint import load
from encoderforge.model.heads import pool
from encoderforge.model.zoo import resolve_model
from encoderforge.recipes.bench_infer import text_sets
from encoderforge.tokenization import load_tokenizer


class ActReduced(nn.Module):
    """8-bit per-channel weights, torch's 7-bit activations (fbgemm `reduce_range=True`)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.inner = Int8Linear(linear, reduce_range=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.inner._packed, True)


VARIANTS = {
    "8-bit weights, 8-bit activations": lambda lin: Int8Linear(lin, reduce_range=False),
    "8-bit weights, 7-bit activations": ActReduced,
    "7-bit weights, 8-bit activations": lambda lin: Int8Linear(lin, reduce_range=True),
}


def swap(model: nn.Module, make) -> nn.Module:
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, make(child))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="texts per set")
    ap.add_argument("--sets", default="short,long256")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    path = resolve_model("minilm-l6")
    tok = load_tokenizer(path)
    enc = load(path).encoder.eval()
    torch.manual_seed(0)
    lin, x = nn.Linear(64, 96), torch.randn(11, 64)
    ref_x = lin(x).detach()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, AVX512-VNNI: {cpu_has_vnni()}\n")
    print("| variant | random layer rel. error | " + " | ".join(f"{s} mean / min cosine" for s in a.sets.split(",")) + " |")
    print("|---|---:|" + "---:|" * len(a.sets.split(",")))
    sets = text_sets(a.sets.split(","), a.n, tok)
    refs = []
    with torch.no_grad():
        for ts in sets:
            ids, mask = encode_padded(tok, ts.texts, max_length=ts.max_length)
            refs.append((ids, mask, torch.nn.functional.normalize(pool(enc(ids, mask), mask), dim=-1)))
        for name, make in VARIANTS.items():
            rel = ((make(lin)(x) - ref_x).norm() / ref_x.norm()).item()
            q = swap(enc, make)
            cells = []
            for ids, mask, ref in refs:
                fid = int8_fidelity(ref, torch.nn.functional.normalize(pool(q(ids, mask), mask), dim=-1))
                cells.append(f"{fid['mean_cosine']:.4f} / {fid['min_cosine']:.4f}")
            print(f"| {name} | {rel:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
