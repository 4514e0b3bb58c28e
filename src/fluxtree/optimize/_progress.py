"""The progress line of ``minimize``: iteration, loss, gradient norm, evaluations, time.

On a terminal the line is redrawn in place (at most ten times a second, and at the end);
into a file or a pipe a line is written at every tenth of the iteration budget (every ten
iterations when there is none) and at the end, so logs stay readable.
"""
from __future__ import annotations

import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """A one-line progress display for ``total`` iterations (None: unknown) on ``stream``."""

    width = 20

    def __init__(self, stream: TextIO, total: int | None, label: str = "") -> None:
        self.stream = stream
        self.total = total if total and total > 0 else None
        self.label = label
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.start = time.perf_counter()
        self._last_draw = -1.0
        self._last_tenth = -1
        self._text = ""
        self._written = ""
        self._closed = False

    def _line(self, it: int, loss: float, gnorm: float | None, counts: str) -> str:
        head = f"{self.label} " if self.label else ""
        if self.total is not None:
            filled = min(self.width, self.width * it // self.total)
            bar = "[" + "#" * filled + "." * (self.width - filled) + "]"
            head += f"{bar} {it:>{len(str(self.total))}}/{self.total}"
        else:
            head += f"iter {it}"
        g = f"  |g| {gnorm:.2e}" if gnorm is not None else ""
        elapsed = time.perf_counter() - self.start
        return f"{head}  loss {loss:.4e}{g}  {counts}  {elapsed:.1f}s"

    def update(self, it: int, loss: float, gnorm: float | None, counts: str) -> None:
        """Show iteration ``it`` (the line is drawn only when due)."""
        self._text = self._line(it, loss, gnorm, counts)
        now = time.perf_counter()
        if self.tty:
            if now - self._last_draw >= 0.1:
                self._last_draw = now
                self.stream.write("\r" + self._text + "\x1b[K")
                self.stream.flush()
        else:
            tenth = 10 * it // self.total if self.total is not None else it // 10
            if tenth > self._last_tenth:
                self._last_tenth = tenth
                self._written = self._text
                self.stream.write(self._text + "\n")
                self.stream.flush()

    def close(self) -> None:
        """Draw the last state and end the line (once)."""
        if not self._closed and self._text:
            if self.tty:
                self.stream.write("\r" + self._text + "\x1b[K\n")
            elif self._text != self._written:
                self.stream.write(self._text + "\n")
            self.stream.flush()
        self._closed = True
