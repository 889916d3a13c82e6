"""What `encoderforge doctor` prints: this machine's CPU, flags, library versions and the kernel choices measured
on it (encoderforge.hardware's cache); with measure=True the choices for MiniLM-L6's shapes are made first."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from torch import nn

from encoderforge.hardware.cache import cache_path, machine_key, read_choices
from encoderforge.hardware.choose import remeasure
from encoderforge.hardware.cpu import cpu_info
from encoderforge.model import Encoder, preset
from encoderforge.training.fast_linear import MINILM_SHAPES, train_linear_choice

MINILM_VOCAB = 30522  # the uncased BERT WordPiece vocabulary of the MiniLM packages (DATA.md)


def doctor_report(*, measure: bool = False) -> dict[str, Any]:
    info = cpu_info()
    if measure:
        from encoderforge.compression.int8_engine import int8_engine_choice
        from encoderforge.compression.quantize import cpu_has_vnni
        from encoderforge.inference.kernel_choice import choose_fp32_linear, choose_precision

        shapes = sorted(set(MINILM_SHAPES))
        with remeasure():  # a choice cached while the machine was busy is replaced by today's measurement
            # what a MiniLM fine-tune or pretraining run measures: whole forward + backward steps of its encoder
            train_linear_choice(Encoder(preset("minilm-l6", vocab_size=MINILM_VOCAB)))
            int8_engine_choice(nn.Sequential(*(nn.Linear(i, o) for i, o in MINILM_SHAPES)), reduce_range=not cpu_has_vnni())
            fp32 = choose_fp32_linear(shapes).picked
            if info.bf16:
                choose_precision(shapes, fp32)
    versions: dict[str, str | None] = {}
    for pkg in ("encoderforge", "torch", "onnxruntime", "transformers"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": info.model,
        "flags": list(info.flags),
        "native bf16": info.bf16,
        "int8 dot products (VNNI/AMX)": info.vnni,
        "cores visible": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "torch CPU capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "versions": versions,
        "machine key": machine_key(),
        "cache": str(cache_path()),
        "choices": read_choices(),
    }


def format_report(rep: dict[str, Any]) -> str:
    lines = [
        f"CPU: {rep['cpu']}",
        f"flags: {' '.join(rep['flags']) or 'none of avx2/avx512/vnni/bf16/amx'}",
        f"native bf16: {'yes' if rep['native bf16'] else 'no'}; int8 dot products (VNNI/AMX): {'yes' if rep['int8 dot products (VNNI/AMX)'] else 'no'}",
        f"cores visible: {rep['cores visible']}; torch threads: {rep['torch threads']}; torch CPU capability: {rep['torch CPU capability']}",
        "versions: "
        + ", ".join(f"{k} {v or 'not installed'}" for k, v in rep["versions"].items())
        + f"; oneDNN {rep['machine key']['onednn']}",
        f"kernel choices ({rep['cache']}):",
    ]
    if not rep["choices"]:
        lines.append("  none measured on this machine yet (run `encoderforge doctor --measure`, or any training / inference)")
    for task, c in sorted(rep["choices"].items()):
        times = ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(c.get("ms", {}).items(), key=lambda kv: kv[1]))
        rejected = "; ".join(f"{k} rejected: {v}" for k, v in c.get("rejected", {}).items())
        note = f"; {c['note']}" if c.get("note") else ""
        lines.append(f"  {task}: {c['picked']}" + (f" ({times})" if times else "") + (f"; {rejected}" if rejected else "") + note)
    return "\n".join(lines)
