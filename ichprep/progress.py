"""Progress reporting as an observer: the computation calls ``update``; this writes to a stream.

On a terminal it redraws one line; elsewhere (logs, CI) it prints a line at most every
``log_interval`` seconds and a last one at the end. Nothing is written for work shorter than
``min_seconds``.
"""

from __future__ import annotations

import time
from typing import TextIO


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    def __init__(self, console: TextIO | None, label: str, total: int, unit: str = "slices",
                 min_seconds: float = 0.5, log_interval: float = 10.0, width: int = 28) -> None:
        self.console, self.label, self.total, self.unit = console, label, max(int(total), 0), unit
        self.min_seconds, self.log_interval, self.width = min_seconds, log_interval, width
        self.start = time.monotonic()
        self._last_write = 0.0
        self._done = 0
        self._wrote = False
        self._tty = bool(console is not None and getattr(console, "isatty", lambda: False)())

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self._done = done
        now = time.monotonic()
        if self.console is None or now - self.start < self.min_seconds:
            return
        interval = 0.2 if self._tty else self.log_interval
        if now - self._last_write >= interval:
            self._write(now)

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self._done / elapsed if elapsed > 0 else 0.0
        frac = self._done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        eta = (self.total - self._done) / rate if rate > 0 else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        return (f"{self.label} [{bar}] {self._done}/{self.total} {self.unit} "
                f"{rate:,.0f}/s elapsed {_fmt_time(elapsed)} eta {_fmt_time(eta)}")

    def _write(self, now: float) -> None:
        line = self._line(now)
        if self._tty:
            self.console.write("\r" + line)
        else:
            self.console.write(line + "\n")
        self.console.flush()
        self._last_write = now
        self._wrote = True

    def close(self) -> None:
        if self.console is None:
            return
        now = time.monotonic()
        if self._wrote or now - self.start >= self.min_seconds:
            self._write(now)
            if self._tty:
                self.console.write("\n")
                self.console.flush()
