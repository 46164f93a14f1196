"""Progress lines on stderr: redrawn in place on a terminal, every few seconds otherwise."""

from __future__ import annotations

import sys
import time


_interrupt_requested = False


def request_interrupt() -> None:
    """Have the next progress update raise KeyboardInterrupt (a SIGTERM whose exception was
    swallowed still stops the run at its next step)."""
    global _interrupt_requested
    _interrupt_requested = True


class Progress:
    def __init__(self, label: str, total: int, unit: str = "images", stream=None,
                 min_interval: float | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval if min_interval is not None else (0.2 if self.tty else 5.0)
        self.done = 0
        self.start = time.monotonic()
        self.last = 0.0
        self.extra = ""

    def update(self, n: int = 1, extra: str = "") -> None:
        if _interrupt_requested:
            raise KeyboardInterrupt
        self.done += n
        self.extra = extra
        now = time.monotonic()
        if now - self.last >= self.min_interval or self.done >= self.total:
            self.last = now
            self._draw()

    def _draw(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        line = (f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
                f"{self.done / elapsed:.1f} {self.unit}/s")
        if self.extra:
            line += f", {self.extra}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
