"""The live progress line that the coordinator feeds from its loop.

:meth:`Progress.update` is called on every turn of the coordinator's loop, so it must
cost next to nothing: it compares the clock (``time.monotonic``, a vDSO read on Linux,
not a system call) and one counter with precomputed thresholds, and returns. Only when
a line is due does it format and write.

Two modes, chosen once from ``stream.isatty()``:

- **terminal**: one line redrawn in place (``\\r`` and erase-to-end) at most
  ``1 / TERMINAL_INTERVAL`` times a second, cut to the terminal's width so that it never
  wraps (a wrapped line cannot be redrawn in place);
- **log** (a batch job's output file, a pipe): a plain line once a minute or each time
  another 10% of the tasks has finished, whichever comes first, so that a log of a
  million-task run holds a few dozen lines, not a million.

:meth:`Progress.close` writes the final line in both modes. A hand-written line was
enough here: ``rich``/``tqdm`` would add a dependency for one line of text.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from hpcflow.model.resources import split_seconds

TERMINAL_INTERVAL = 0.1
"""Seconds between redraws on a terminal (at most ~10 a second)."""
LOG_INTERVAL = 60.0
"""Seconds between lines in a log, at the latest."""
LOG_FRACTION = 0.1
"""A line in a log each time this fraction of the tasks has finished."""


class Progress:
    """Progress of a run of ``total`` tasks, written to ``stream`` (default stderr).

    Protocol: ``update(done, running, failed, skipped)`` as often as you like (it limits
    itself), then ``close(status)`` once. ``already``: tasks completed by an earlier
    session (a resume), left out of the rate behind the ETA. ``interactive`` overrides the
    terminal check; ``clock`` is for tests (seconds, monotonic)."""

    def __init__(self, total: int, stream: TextIO | None = None, *, already: int = 0,
                 interactive: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 width: int | None = None) -> None:
        self.total = total
        self.already = already
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = _isatty(self.stream) if interactive is None else interactive
        self.width = width or (_terminal_width(self.stream) if self.interactive else 0)
        self._clock = clock
        self.started = clock()
        self._counts = (0, 0, 0, 0)
        self._step = max(1, math.ceil(total * LOG_FRACTION))
        self._next_time = self.started + (TERMINAL_INTERVAL if self.interactive else LOG_INTERVAL)
        self._next_count = (already // self._step + 1) * self._step
        self.closed = False

    def update(self, done: int, running: int, failed: int = 0, skipped: int = 0) -> None:
        """Record the counts; write a line only when one is due (see the module doc)."""
        self._counts = (done, running, failed, skipped)
        finished = done + failed + skipped
        now = self._clock()
        if now >= self._next_time or (finished >= self._next_count and not self.interactive):
            self._emit(now, finished)

    def close(self, status: str) -> None:
        """Write the final line (with ``status``: succeeded, failed, stopped); idempotent."""
        if self.closed:
            return
        self.closed = True
        now = self._clock()
        line = f"{status}: {self._line(now, final=True)}"
        if self.interactive:
            self._write(f"\r{self._fit(line)}\x1b[K\n")
        else:
            self._write(f"[hpcflow] {line}\n")

    def _emit(self, now: float, finished: int) -> None:
        if self.interactive:
            self._next_time = now + TERMINAL_INTERVAL
            self._write(f"\r{self._fit(self._line(now))}\x1b[K")
        else:
            self._next_time = now + LOG_INTERVAL
            self._next_count = (finished // self._step + 1) * self._step
            self._write(f"[hpcflow] {self._line(now)}\n")

    def _line(self, now: float, final: bool = False) -> str:
        done, running, failed, skipped = self._counts
        elapsed = now - self.started
        parts = [f"{done:,}/{self.total:,} done", f"{running:,} running"]
        if failed:
            parts.append(f"{failed:,} failed")
        if skipped:
            parts.append(f"{skipped:,} skipped")
        parts.append(f"{format_seconds(elapsed)} elapsed")
        if not final:
            parts.append(f"ETA {self._eta(elapsed, done + failed, done + failed + skipped)}")
        return ", ".join(parts)

    def _eta(self, elapsed: float, ran: int, finished: int) -> str:
        """Remaining tasks at the rate seen so far (tasks that ran, not the skipped)."""
        ran -= self.already
        if ran <= 0 or elapsed <= 0:
            return "?"
        return format_seconds(elapsed / ran * max(0, self.total - finished))

    def _fit(self, line: str) -> str:
        return line[: self.width - 1] if self.width > 1 else line

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream never stops the run


def format_seconds(seconds: float) -> str:
    """``0:01:05``, ``12:00:00``, ``2d 03:04:05``: wall time as people read it."""
    days, hours, minutes, secs = split_seconds(int(max(0.0, seconds)))
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else clock


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80
