"""The allocation's end: start no task that cannot finish before it, and stop in good order.

The coordinator learns when its allocation ends once, at start: ``--deadline`` (seconds
from now) if given, else ``SLURM_JOB_END_TIME`` (epoch seconds, set by newer Slurm), else
``squeue -h -j $SLURM_JOB_ID -o %e`` (one call, with a time-out). With an end known, a
task whose ``time`` estimate (only an explicit one: the planning default says nothing
about a task) does not fit before the grace time (below), minus :data:`MARGIN`, is not
started: it waits for the next allocation.

SIGUSR1 (the batch script forwards Slurm's ``--signal=B:USR1@N``, which may come up to
a minute early) stops dispatching. Running tasks may finish until :data:`GRACE` seconds
before the end (or :data:`GRACE_NO_END` seconds after the signal where no end is known);
then the rest are stopped and journalled as such, so that a resume runs them again. The
run then ends with status ``walltime`` and the CLI exits with :data:`EXIT_WALLTIME`,
on which the batch script submits a continuation job (``--resume``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

EXIT_WALLTIME = 75
"""The CLI's exit code when the run stopped for the allocation's end (EX_TEMPFAIL)."""
MARGIN = 5.0
"""Seconds kept free after a task's estimate (and before the grace time) for it to fit."""
GRACE = 30.0
"""Running tasks are stopped this many seconds before the allocation's end."""
GRACE_NO_END = 30.0
"""Without a known end: seconds after SIGUSR1 until running tasks are stopped."""
SQUEUE_TIMEOUT = 10.0


@dataclass
class Walltime:
    """When the allocation ends (epoch seconds, None if unknown) and whether the
    pre-walltime signal came. The signal handler only sets a flag; the core acts on it."""

    end: float | None = None
    signalled_at: float | None = None

    def fits(self, estimate: float | None) -> bool:
        """Whether a task of this estimate can still finish before the end."""
        if self.end is None or estimate is None:
            return True
        return time.time() + estimate + MARGIN <= self.end - GRACE

    @property
    def draining(self) -> bool:
        """Stop dispatching: the signal came, or the end is within the grace time."""
        return self.signalled_at is not None or (
            self.end is not None and time.time() >= self.end - GRACE)

    def past_grace(self) -> bool:
        """Running tasks must be stopped now."""
        now = time.time()
        if self.end is not None:
            return now >= self.end - GRACE
        return self.signalled_at is not None and now >= self.signalled_at + GRACE_NO_END

    def on_signal(self, _signum: int, _frame: object) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.time()


def allocation_end(deadline: float | None = None, env: dict[str, str] | None = None) -> float | None:
    """The allocation's end as epoch seconds (see the module docstring), or None."""
    env = dict(os.environ) if env is None else env
    if deadline is not None:
        return time.time() + deadline
    with contextlib.suppress(ValueError):
        if env.get("SLURM_JOB_END_TIME"):
            return float(env["SLURM_JOB_END_TIME"])
    job = env.get("SLURM_JOB_ID")
    return _squeue_end(job) if job else None


def _squeue_end(job: str) -> float | None:
    """``squeue -o %e`` once: the job's end in local time (``2026-11-25T14:35:00``)."""
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True,
                              text=True, timeout=SQUEUE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:  # "N/A", "Unknown", empty: no limit known
        return None


_EARLY: list[float] = []
"""When SIGUSR1 came before the run's own handler was in place (see :func:`arm`)."""


def _record(_signum: int, _frame: object) -> None:
    if not _EARLY:
        _EARLY.append(time.time())


def arm() -> None:
    """Note SIGUSR1 from the process's start (the CLI calls this first): Slurm may send
    it during start-up or shut-down, and its default action would kill the process (the
    batch script would then see 138, not 75, and start no continuation)."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGUSR1, _record)


@contextlib.contextmanager
def watching(walltime: Walltime) -> Iterator[Walltime]:
    """SIGUSR1 marks the walltime signal while the run lasts (main thread only); one that
    came before (see :func:`arm`) counts too."""
    if _EARLY:
        walltime.signalled_at = _EARLY[0]
    if threading.current_thread() is not threading.main_thread():
        yield walltime
        return
    previous = signal.signal(signal.SIGUSR1, walltime.on_signal)
    try:
        yield walltime
    finally:
        signal.signal(signal.SIGUSR1, previous)
