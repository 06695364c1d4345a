"""Measured memory: the peak resident set size (RSS) of what ran a task.

Every backend's workers run tasks through the shared Executor, which asks this module
for a task's peak RSS; the Outcome carries it as a small dict (``peak_rss``, and
``base_rss`` or ``peak_rss_bound``) that the coordinator journals in the task's DONE or
FAIL extra, and the report shows. Linux only (``/proc``); elsewhere nothing is measured.

**Python task in the worker** (the common case). A long-lived worker's ``ru_maxrss``
only grows, but Linux lets a process reset its high-water mark (VmHWM) to its current
RSS: write ``5`` to ``/proc/self/clear_refs``. :meth:`Meter.start` does that and notes
the RSS (the worker's baseline: interpreter, imports, what it holds); :meth:`Meter.peak`
reads the high-water mark at the end. So the peak is the worker process's, baseline
included, over the task alone. Cost: about 4 µs a task, so the Executor measures only
the tasks of groups whose previous task on that worker ran at least
:data:`WATCH_AFTER` (1 ms; the first of each group is always measured): a shorter task
can fault in at most a few MB. An unmeasured task costs a comparison.

The high-water mark is read with ``getrusage`` (0.8 µs), which returns the larger of it
and ``signal->maxrss``, a value the kernel set when the process was exec'd: the RSS of
the image it replaced. For a worker exec'd from a large parent (a Dask nanny spawns its
worker) that is the parent's size and would swamp every small peak, so ``start`` checks
it against the RSS it just read, and where it is larger ``peak`` reads VmHWM from
``/proc/self/status`` instead (8 µs).

**Children** (shell tasks; Python tasks forked for a time-out or ``--isolate``).
``os.wait4`` gives a child's ``ru_maxrss``: the largest peak of the child and of every
descendant it reaped (the largest one process, not a sum). A forked Python child starts
as a copy of the worker, whose pages count in its RSS: its peak includes the worker's
baseline, as for a task in the worker. A shell command's process was exec'd from a copy
of the worker, and the kernel counts that copy in its ``ru_maxrss`` as above: what
``wait4`` says is ``max(the worker's RSS at the spawn, the command's true peak)``. So
the worker resets its own high-water mark just before the spawn (otherwise a vfork
child would carry the worker's lifetime peak) and notes its RSS, the *floor*: a reading
clearly above the floor is the command's peak, exactly; one at the floor only says that
the command stayed below it (``peak_rss_bound``). A command ended on time-out is
measured from its processes' VmHWM, read just before they are killed.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from typing import Any

WATCH_AFTER = 0.001
"""Seconds: measure a group's next task on a worker when its last one ran this long."""
MARGIN = 4 * 2**20
"""Bytes of slack between a floor or baseline read and the kernel's own value."""
_KIB = 1024  # ru_maxrss and /proc report KiB on Linux
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

if sys.platform.startswith("linux"):
    import resource

    def _maxrss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB
else:  # pragma: no cover - nothing is measured off Linux
    def _maxrss() -> int:
        return 0


class Meter:
    """This process's peak RSS over an interval: ``base = start()`` ... ``peak()``.

    One per process (:func:`process_meter`): the files it keeps open name this process.
    ``can_reset`` is False where ``clear_refs`` cannot be written (then only children are
    measured, against the worker's high-water mark as their floor)."""

    __slots__ = ("_clear", "_statm", "_status", "_trusted", "can_reset", "pid")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)  # OSError: no /proc here
        self._status = os.open("/proc/self/status", os.O_RDONLY)
        try:
            self._clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            self._clear = -1
        self.can_reset = self._clear >= 0
        self._trusted = False

    def start(self) -> int:
        """Reset the high-water mark to the RSS now; return that RSS (needs ``can_reset``)."""
        os.write(self._clear, b"5")
        base = self.rss()
        self._trusted = _maxrss() <= base + MARGIN
        return base

    def peak(self) -> int:
        """The peak RSS since :meth:`start`."""
        return _maxrss() if self._trusted else self.hwm()

    def floor(self) -> int:
        """What a child spawned now will report at least as its ``ru_maxrss``."""
        if self.can_reset:
            os.write(self._clear, b"5")
            return self.rss()
        return self.hwm()

    def rss(self) -> int:
        return int(os.pread(self._statm, 256, 0).split()[1]) * _PAGE

    def hwm(self) -> int:
        return _vm_hwm(os.pread(self._status, 8192, 0))

    def close(self) -> None:
        for fd in (self._statm, self._status, self._clear):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


_METER: list[Meter | None] = []  # this process's meter; rebuilt in a forked child


def process_meter() -> Meter | None:
    """This process's :class:`Meter`, or None where nothing can be measured."""
    if _METER and (_METER[0] is None or _METER[0].pid == os.getpid()):
        return _METER[0]
    if _METER and _METER[0] is not None:
        _METER[0].close()  # a forked child's copies of its parent's files
    meter: Meter | None = None
    if sys.platform.startswith("linux"):
        try:
            meter = Meter()
        except OSError:
            meter = None
    _METER[:] = [meter]
    return meter


def process_hwm(pid: int) -> int:
    """VmHWM of a live process in bytes; 0 if it is gone (or a zombie) or unreadable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            return _vm_hwm(fh.read())
    except (OSError, ValueError):
        return 0


def _vm_hwm(status: bytes) -> int:
    at = status.find(b"VmHWM:")
    if at < 0:
        return 0
    return int(status[at + 6 : status.index(b"k", at)]) * _KIB


# -- children ---------------------------------------------------------------------------
def wait_child(pid: int, timeout: float | None = None) -> tuple[int, int]:
    """Reap child ``pid``: ``(wait status, ru_maxrss in bytes)``. TimeoutError if it is
    still running after ``timeout`` seconds (it is then left unreaped)."""
    if timeout is not None:
        _wait_exit(pid, timeout)
    _, status, usage = os.wait4(pid, 0)
    return status, usage.ru_maxrss * _KIB if sys.platform.startswith("linux") else 0


def _wait_exit(pid: int, timeout: float) -> None:
    """Return once child ``pid`` has exited (without reaping it); TimeoutError after
    ``timeout`` s. A pidfd wakes us at the exit; without one, poll as Popen.wait does."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            poller = select.poll()  # not select(): a worker may hold more than 1024 files
            poller.register(fd, select.POLLIN)
            if not poller.poll(max(0.0, timeout) * 1000):
                raise TimeoutError
        finally:
            os.close(fd)
        return
    deadline, delay = time.monotonic() + timeout, 0.0005
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


def forked_memory(maxrss: int, base: int | None, live: int = 0) -> dict[str, int] | None:
    """A forked Python child's measurement: its peak (a copy of the worker's pages
    included) and the worker's RSS when it forked."""
    if base is None:
        return None
    return {"peak_rss": max(maxrss, live), "base_rss": base}


def shell_memory(maxrss: int, floor: int | None, live: int = 0) -> dict[str, int] | None:
    """A shell command's measurement from its ``ru_maxrss`` (never below ``floor``, the
    worker's RSS at the spawn) and ``live``, the largest VmHWM of its processes read
    before a kill (exact, but only of the processes alive then)."""
    if floor is None:
        return None
    if maxrss > floor + MARGIN:  # the reaped tree peaked above the floor: exact
        return {"peak_rss": max(maxrss, live)}
    if live > floor + MARGIN:  # what was reaped stayed below the floor, the live tree not
        return {"peak_rss": live}
    return {"peak_rss_bound": max(maxrss, live)}


def larger(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Of two measurements (the ranks of one task), the one with the larger peak."""
    if not a or not b:
        return a or b
    return a if peak_of(a) >= peak_of(b) else b


def peak_of(memory: dict[str, Any]) -> int:
    """The peak, or its upper bound, of a measurement (0 if it has neither)."""
    return int(memory.get("peak_rss") or memory.get("peak_rss_bound") or 0)
