"""The CPU's model name and instruction-set flags, read once from /proc/cpuinfo: printed beside every number,
and asked before a precision or kernel that needs a given instruction set is offered."""

from __future__ import annotations

import functools
import platform
import re
from dataclasses import dataclass

# The flags that decide GEMM speed here: AVX2 / AVX-512 vector width, VNNI int8 dot products, bf16 dot products
# (AVX512-BF16) and Intel's AMX tile units.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str  # e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8480+"
    flags: tuple[str, ...]  # the ISA_FLAGS this CPU has, in ISA_FLAGS order

    @property
    def vnni(self) -> bool:
        """u8 x s8 dot products accumulate in int32 (8-bit activations cannot saturate)."""
        return "avx512_vnni" in self.flags or "amx_int8" in self.flags

    @property
    def bf16(self) -> bool:
        """bf16 GEMMs run on native instructions (AVX512-BF16 dot products or AMX tiles), not emulated."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags

    def describe(self) -> str:
        """One line for tables: model and flags."""
        return f"{self.model} ({' '.join(self.flags) or 'none of ' + '/'.join(ISA_FLAGS)})"


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (non-Linux: the platform's name and no flags, so nothing that needs a flag is offered)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return CpuInfo(model=platform.processor() or platform.machine() or "?", flags=())
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    have = set(text.split())
    return CpuInfo(model=m.group(1).strip() if m else "?", flags=tuple(f for f in ISA_FLAGS if f in have))
