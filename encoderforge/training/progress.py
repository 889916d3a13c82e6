"""Progress for long commands: a tqdm bar on a terminal, a periodic one-line status otherwise (CI logs, nohup,
pipes), each with steps, throughput, ETA and the current loss or metric."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm


class Progress:
    """`update(n, **postfix)` after each unit of work; `close()` at the end.

    Args:
        total: units in the run (steps, texts).
        initial: units already done (a resumed run).
        unit: what a unit is ("step").
        enabled: False prints nothing (e.g. ranks other than 0).
        every_s: on a non-terminal, seconds between status lines.
        stream: where to write (stderr: stdout stays for results).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        unit: str = "step",
        desc: str = "",
        enabled: bool = True,
        every_s: float = 10.0,
        stream: TextIO | None = None,
    ):
        self.stream = stream or sys.stderr
        self.total, self.done, self.unit, self.desc, self.enabled = total, initial, unit, desc, enabled
        self.every_s, self.t0, self.start = every_s, time.perf_counter(), initial
        self.last, self.printed = self.t0, False  # the first line after every_s: short runs print nothing
        self.postfix: dict[str, Any] = {}
        tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc or None, file=self.stream) if tty else None

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done += n
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(**postfix)
        elif self.enabled and (time.perf_counter() - self.last >= self.every_s or (self.printed and self.done >= self.total)):
            self.last, self.printed = time.perf_counter(), True
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.start) / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        return (
            f"{self.desc + ' ' if self.desc else ''}{self.unit} {self.done}/{self.total} "
            f"({100 * self.done / max(self.total, 1):.0f}%) elapsed {_hms(elapsed)} eta {_hms(eta)} {extra}"
        ).rstrip()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _hms(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
