"""A dependency-free progress line for long loops: rate and ETA, redrawn in place on a terminal,
logged every few seconds elsewhere (CI logs, files)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    def __init__(self, total: Optional[int], label: str, stream: TextIO = sys.stderr,
                 interval: float = 0.2, log_interval: float = 10.0, enabled: bool = True):
        self.total, self.label, self.stream = total, label, stream
        self.enabled = enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.interval = interval if self.tty else log_interval
        self.start = time.monotonic()
        self.last = 0.0
        self.count = 0
        self.extra = ""

    def update(self, n: int = 1, extra: str = "") -> None:
        self.count += n
        if extra:
            self.extra = extra
        now = time.monotonic()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._draw(now)

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        if self.total:
            pct = 100.0 * self.count / self.total
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            eta_s = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
            text = (f"{self.label}: {self.count}/{self.total} ({pct:5.1f}%) "
                    f"{rate:7.1f}/s  eta {eta_s}")
        else:
            text = f"{self.label}: {self.count} {rate:7.1f}/s"
        return text + (f"  {self.extra}" if self.extra else "")

    def _draw(self, now: float) -> None:
        line = self._line(now)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> float:
        """Draws the final line; returns the elapsed seconds."""
        now = time.monotonic()
        if self.enabled:
            self._draw(now)
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()
        return now - self.start
