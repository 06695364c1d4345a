"""What travels between ranks, and how a rank waits for it without stealing a core.

Engine messages go over a private duplicate of ``COMM_WORLD`` through a
:class:`~hpcflow.engine.mpi.channel.Channel` (pickle protocol 5, large arrays out of
band, one MPI message for a small object). Tags say what a message holds:

=================  ===========================  ======================================
tag                direction                    payload
=================  ===========================  ======================================
``CALLS``          coordinator -> worker        list of :func:`call_item` tuples
``STOP``           coordinator -> worker        ``None``: leave the serve loop
``OUTCOMES``       worker -> coordinator        list of :class:`~hpcflow.engine.execute.Outcome`
                                                as plain tuples (:func:`read_outcomes`)
``BYE``            worker -> coordinator        ``None``: stop received, nothing more comes
=================  ===========================  ======================================

Calls and outcomes travel as plain tuples: pickling a ``NamedTuple`` goes through a
Python-level ``__reduce__`` and costs about 2 µs per record, a plain tuple 0.3 µs.

Several calls travel in one message when tasks are short (the core queues several per
worker), and a worker returns several outcomes per message. Start and end use
collectives on ``COMM_WORLD`` (set-up broadcast, slot gather, the final result), each
preceded by a polled ``Ibarrier`` (:func:`polite_wait`): a rank that waits for rank 0
to finish planning sleeps instead of spinning inside MPICH's blocking progress loop.

Exceptions do not all survive pickling (an ``__init__`` with several required
arguments breaks ``BaseException.__reduce__``), so they travel as (class, args, state)
through :func:`pack_exception` and :func:`unpack_exception`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from mpi4py import MPI

from hpcflow.engine.core import RunResult
from hpcflow.engine.execute import Call, Outcome
from hpcflow.errors import EngineError, TaskFailed

CALLS, STOP, OUTCOMES, BYE = 11, 12, 13, 14
_PR_SET_TIMERSLACK = 29


def call_item(call: Call, ranks: int = 1, task_rank: int = 0) -> tuple[Any, ...]:
    """A call on the wire: ``(ranks, task_rank, *call)``."""
    return (ranks, task_rank, *call)


def read_call(item: tuple[Any, ...]) -> tuple[Call, int, int]:
    """``(call, ranks, task_rank)`` from :func:`call_item`'s tuple."""
    return Call._make(item[2:]), item[0], item[1]


def read_outcomes(items: list[tuple[Any, ...]]) -> list[Outcome]:
    new = tuple.__new__  # what Outcome._make does, without its Python frame per record
    return [new(Outcome, item) for item in items]


class Interrupted(KeyboardInterrupt):
    """A rank was told to stop by SIGINT or SIGTERM (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        import signal

        return f"interrupted by {signal.Signals(self.signum).name}"


class Backoff:
    """How a rank polls: no sleep at first, then sleeps doubling from ``maximum / 1024``,
    as ``mpi4py.futures`` does, but capped at ``maximum / 10`` for the first
    ``10 * maximum`` seconds of a wait and only then at ``maximum``. A wait that follows
    a message usually ends quickly (short tasks come back within a millisecond), so the
    first sleeps stay short; a long wait costs ~1000 polls a second, never a hot spin."""

    __slots__ = ("delay", "maximum", "minimum", "patience", "short", "waited")

    def __init__(self, maximum: float = 0.001) -> None:
        self.maximum = max(0.0, maximum)
        self.minimum = self.maximum / 1024
        self.short = self.maximum / 10
        self.patience = 10 * self.maximum
        self.delay = self.waited = 0.0

    def reset(self) -> None:
        self.delay = self.waited = 0.0

    def sleep(self) -> None:
        time.sleep(self.delay)
        self._grow()

    def sleep_on(self, ready: Callable[[float], bool]) -> None:
        """As :meth:`sleep`, but wake as soon as ``ready(timeout)`` says so."""
        ready(self.delay)
        self._grow()

    def _grow(self) -> None:
        self.waited += self.delay
        cap = self.short if self.waited < self.patience else self.maximum
        self.delay = min(cap, max(self.minimum, self.delay * 2))


def tighten_timer_slack(nanoseconds: int = 1000) -> None:
    """Let short sleeps be short: Linux stretches a sleep by the thread's timer slack
    (50 µs by default), so the back-off's first sleeps of 1-10 µs would last 60-80 µs
    and a waiting rank would notice a message that much later. No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, nanoseconds, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def polite_wait(request: MPI.Request, backoff: Backoff,
                check: Callable[[], None] | None = None) -> None:
    """Complete ``request`` by polling with back-off; ``check`` may raise to give up."""
    backoff.reset()
    while not request.Test():
        if check is not None:
            check()
        backoff.sleep()


def polite_bcast(world: MPI.Intracomm, obj: Any, backoff: Backoff) -> Any:
    """``bcast(obj, root=0)`` over ``world`` (pkl5: large arrays out of band) once every
    rank has arrived (a polled ``Ibarrier``)."""
    from mpi4py.util import pkl5

    polite_wait(world.Ibarrier(), backoff)
    return pkl5.Intracomm(world).bcast(obj, root=0)


def pack_exception(exc: BaseException) -> tuple[type, tuple[Any, ...], dict[str, Any]]:
    return (type(exc), exc.args, dict(getattr(exc, "__dict__", {})))


def unpack_exception(packed: tuple[type, tuple[Any, ...], dict[str, Any]]) -> BaseException:
    cls, args, state = packed
    try:
        exc = cls.__new__(cls)
        exc.args = args
        exc.__dict__.update(state)
        return exc
    except Exception:  # an exotic class: keep its text
        return EngineError(f"{cls.__name__}: {args[0] if args else ''}")


def pack_result(result: RunResult) -> tuple[Any, ...]:
    failures = [(f.task, f.error, f.log) for f in result.failures]
    return (result.status, result.outputs, result.run_dir, result.done, failures,
            result.skipped, result.elapsed)


def unpack_result(packed: tuple[Any, ...]) -> RunResult:
    status, outputs, run_dir, done, failures, skipped, elapsed = packed
    return RunResult(status, outputs, run_dir, done, [TaskFailed(*f) for f in failures],
                     skipped, elapsed)
