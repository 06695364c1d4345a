"""One ``hf.run(wf, engine="mpi")`` on every rank, the way ``MPICommExecutor`` works.

Every rank runs the user's script. Rank 0 plans, starts the backend and drives the
shared core; the other ranks serve until rank 0 is done; then every rank's ``hf.run``
returns the same :class:`RunResult` (or raises the same error). The ranks meet only in
a fixed sequence of collectives, so that no path leaves one rank waiting for a
collective that another never enters:

1. ``bcast`` from rank 0: ``("setup", ...)`` (the group actions pickled with
   ``cloudpickle``, so lambdas, closures and ``__main__`` functions work; the plan's
   ``python_path``; the run folder; GPU and memory options), or already the final
   ``("error", ...)`` when planning failed;
2. after a set-up: ``Dup`` of the world for the engine's messages, the node split
   (``discover.node_view``), a ``gather`` of each worker's slot (or its set-up error),
   and a ``bcast`` of rank 0's verdict (``check_fits`` passed, or why not);
3. the serve loop (``worker.py``) until ``STOP``;
4. the final ``bcast``: ``("result", RunResult)`` or ``("error", exception)``.

Each ``bcast`` is preceded by a polled ``Ibarrier`` (``wire.polite_bcast``), so ranks
that wait for rank 0 sleep rather than spin.

Signals on rank 0 (:class:`StopSignal`): while rank 0 plans, SIGINT/SIGTERM raise at
once; from the set-up on they are only noted, and the backend's ``wait`` raises
:class:`~hpcflow.engine.mpi.wire.Interrupted` at a safe point (never halfway through a
journal write or between two collectives). The core records ``END stopped``, the
backend tells every worker to stop, and all ranks raise ``Interrupted`` (a
``KeyboardInterrupt``: the CLI's exit status 130). A second signal aborts every rank.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mpi4py import MPI

from hpcflow.engine.core import RunResult
from hpcflow.engine.mpi.settings import Settings
from hpcflow.engine.mpi.wire import (
    Backoff,
    Interrupted,
    pack_exception,
    pack_result,
    polite_bcast,
    tighten_timer_slack,
    unpack_exception,
    unpack_result,
)
from hpcflow.errors import EngineError

if TYPE_CHECKING:
    from hpcflow.engine.runner import EngineConfig

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal:
    """Rank 0's SIGINT/SIGTERM handler (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False

    def __call__(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            MPI.COMM_WORLD.Abort(128 + signum)
        self.signum = signum
        if not self.deferred:
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal came (called where stopping is safe)."""
        if self.signum is not None:
            raise Interrupted(self.signum)


@dataclass
class Session:
    """What rank 0's backend factory needs from the session that runs it."""

    world: MPI.Intracomm
    settings: Settings
    stop: StopSignal = field(default_factory=StopSignal)

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.settings.backoff)


_current: ContextVar[Session] = ContextVar("hpcflow_mpi_session")


def current_session() -> Session:
    try:
        return _current.get()
    except LookupError:
        raise EngineError("the MPI backend runs only inside run_workflow(engine='mpi')") from None


def run(workflow: Any, config: EngineConfig,
        coordinate: Callable[[Any, EngineConfig], RunResult]) -> RunResult:
    """Entry point on every rank: rank 0 runs ``coordinate`` (the runner's usual path,
    which builds this backend), the others serve; all return the same result."""
    world = MPI.COMM_WORLD
    if world.size == 1:
        raise EngineError(
            "the MPI engine needs several ranks: start the script with "
            "`mpiexec -n N python script.py` (N-1 workers), or use the command line, "
            "`hpcflow run --engine mpi --workers K wf.yaml`, which starts mpiexec itself")
    if config.workers is not None and config.workers != world.size - 1:
        raise EngineError(f"workers={config.workers} but mpiexec started {world.size} ranks "
                          f"({world.size - 1} workers and the coordinator)")
    session = Session(world, Settings.from_env())
    tighten_timer_slack()
    if world.rank != 0:
        return _serve(session)
    return _coordinate(session, workflow, config, coordinate)


def _coordinate(session: Session, workflow: Any, config: EngineConfig,
                coordinate: Callable[[Any, EngineConfig], RunResult]) -> RunResult:
    token = _current.set(session)
    previous = _install(session.stop)
    try:
        try:
            result = coordinate(workflow, config)
        except BaseException as exc:
            session.stop.deferred = True
            _final(session, ("error", _packable(exc)))
            raise
        session.stop.deferred = True
        _final(session, ("result", pack_result(result)))
        return result
    finally:
        _current.reset(token)
        _restore(previous)


def _final(session: Session, message: tuple[str, Any]) -> None:
    polite_bcast(session.world, message, session.backoff)


def _packable(exc: BaseException) -> Any:
    packed = pack_exception(exc)
    try:
        pickle.dumps(packed)
    except Exception:
        packed = pack_exception(EngineError(f"{type(exc).__name__}: {exc}"))
    return packed


def _serve(session: Session) -> RunResult:
    from hpcflow.engine.mpi.backend import serve_setup

    world = session.world
    # rank 0 decides when to stop; a USR1 sent to every rank (a user's own sbatch script
    # may forward it; hpcflow's never does) is handled by rank 0's coordinator alone
    previous = _install(lambda _s, _f: None, (*_SIGNALS, signal.SIGUSR1))
    try:
        while True:
            kind, payload = polite_bcast(world, None, session.backoff)
            if kind == "setup":
                serve_setup(session, payload)
            elif kind == "result":
                return unpack_result(payload)
            else:
                raise unpack_exception(payload)
    finally:
        _restore(previous)


def _install(handler: Any, signals: tuple[int, ...] = _SIGNALS) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        for signum in signals:
            previous[signum] = signal.signal(signum, handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
