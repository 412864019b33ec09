"""Progress of the converter's long loops on stderr: ``keras.utils.Progbar`` (count, bar, ETA and
time per item), redrawn in place. Progbar prints to stdout, where the commands print their
results, so every draw is redirected to stderr. Keras (and with it TensorFlow) is imported only
when progress is shown."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Optional


class StderrProgbar:
    """``keras.utils.Progbar`` drawing on stderr; silent (and Keras-free) when not ``enabled``.

    Redrawn every ``interval`` seconds on a terminal, every ``log_interval`` seconds elsewhere
    (CI logs, files). `close` returns the seconds since construction, shown or not."""

    def __init__(self, total: Optional[int], label: str, unit_name: str = "image",
                 enabled: bool = True, interval: float = 0.2, log_interval: float = 10.0):
        self.start = time.monotonic()
        self.count = 0
        self._bar = None
        if not enabled:
            return
        from keras.utils import Progbar

        tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        print(f"{label}: {total if total is not None else '?'} {unit_name}s", file=sys.stderr,
              flush=True)
        with contextlib.redirect_stdout(sys.stderr):
            self._bar = Progbar(total, unit_name=unit_name,
                                interval=interval if tty else log_interval)

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            with contextlib.redirect_stdout(sys.stderr):
                self._bar.update(self.count, finalize=False)

    def close(self) -> float:
        """Draws the final line; returns the elapsed seconds."""
        if self._bar is not None:
            with contextlib.redirect_stdout(sys.stderr):
                self._bar.update(self.count, finalize=True)
            sys.stderr.flush()
        return time.monotonic() - self.start
