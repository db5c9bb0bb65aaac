"""A small dependency-free progress bar for long scans (``probe modbus --units``), drawn on stderr.

It draws only when the stream is a terminal (a pipe or a log file gets nothing, so the command's stdout stays
clean for scripts) and redraws at most every ``min_interval_s``. The clock is injectable for tests.

::

    with Progress(total=247, label="scanning unit ids") as bar:
        for uid in ids:
            ...
            bar.advance(note=f"unit {uid}")

Threads: one owner (the CLI's main thread).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "render_bar"]


def render_bar(done: int, total: int, width: int = 30, label: str = "", note: str = "") -> str:
    """One line ``label [#####.....]  12/247  note`` (no newline); ``total`` 0 shows an empty bar."""
    frac = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = round(frac * width)
    bar = "#" * filled + "." * (width - filled)
    head = f"{label} " if label else ""
    tail = f"  {note}" if note else ""
    return f"{head}[{bar}] {done}/{total}{tail}"


class Progress:
    """Progress bar on ``stream`` (default stderr) when it is a TTY (``enabled`` overrides the detection)."""

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        width: int = 30,
        min_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty()) if callable(isatty) else False
        self.enabled = enabled
        self.width = width
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_draw = float("-inf")
        self._drawn_len = 0

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more items done and redraw (rate-limited; the last item always draws)."""
        self.done += n
        now = self._clock()
        if self.done >= self.total or now - self._last_draw >= self.min_interval_s:
            self._draw(note)
            self._last_draw = now

    def _draw(self, note: str) -> None:
        if not self.enabled:
            return
        line = render_bar(self.done, self.total, self.width, self.label, note)
        pad = " " * max(0, self._drawn_len - len(line))
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._drawn_len = len(line)

    def close(self) -> None:
        """Erase the bar so what is printed next starts on a clean line. Idempotent."""
        if self.enabled and self._drawn_len:
            self.stream.write("\r" + " " * self._drawn_len + "\r")
            self.stream.flush()
            self._drawn_len = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
