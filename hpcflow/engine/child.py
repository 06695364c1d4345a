"""A task process: a long-lived forked process that runs calls, replaced when it dies.

The local engine's workers are task processes, and each MPI worker rank runs its
one-rank tasks in one (the rank only relays), so that a task that kills its process
(a segfault, an abort, the out-of-memory killer) fails alone: under MPICH a rank that
dies ends every rank.

The owner sends batches of ``(call, ranks)`` over a pipe; the process runs them one at
a time in the order sent (a run of a sweep's members expanded in place,
``engine/runs.py``), persists each result (``engine/results.py``) and sends outcomes
back in batches, as plain tuples. Before each call it writes the call's id, attempt and
start time into a few words of shared memory, and clears them once the outcome is
persisted; that costs a few hundred nanoseconds a task.

The owner keeps the calls it sent in order (``_held``) and counts the outcomes off them.
When the pipe breaks, :meth:`TaskProcess.receive` reaps the process and returns one
FAILED outcome for the call it was running (``task NAME crashed: its process died of
SIGSEGV``, with ``tasks/NAME/error.log`` holding that line and the Python traceback
that ``faulthandler`` wrote at the crash into a private file of the process, never to
the terminal); it starts a fresh process and sends it the other calls the dead one
held, those that had finished but not yet reported included (their results are
persisted again). A process that dies outside any task is replaced too, up to
:data:`MAX_IDLE_DEATHS` times in a row.

Calls travel with the standard pickler; what it refuses (a lambda among the arguments)
goes by value with ``cloudpickle``, which the process's ``pickle.loads`` reads. The
process ignores SIGINT (its owner decides how to stop) and handles SIGTERM with
``on_term``: ignored for the local engine, whose coordinator ends its workers itself;
passed on to the rank for the MPI engine, as if the rank had been told.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing as mp
import os
import pickle
import select
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from hpcflow.engine.execute import Call, Executor, Outcome, describe_exit, kill_tree
from hpcflow.engine.results import persist
from hpcflow.engine.runs import RunSpec, expand
from hpcflow.errors import EngineError
from hpcflow.store.rundir import RunDir

MAX_IDLE_DEATHS = 3
MAX_BATCH = 256
_NONE = -1.0
_new = tuple.__new__


class TaskProcess:
    """One forked process that runs calls for worker ``index`` (see the module docstring)."""

    def __init__(self, index: int, actions: list, runs: dict[int, RunSpec], run_dir: str,
                 python_path: Sequence[str], launcher: Callable[[int], list[str]] | None = None,
                 on_term: Callable[[int, Any], None] | None = None) -> None:
        """``on_term``: the process's SIGTERM handler (default: ignore it; the owner
        stops it); :func:`tell_owner` passes the signal on to the owner."""
        self.index = index
        self._setup = (actions, runs, run_dir, list(python_path), launcher, on_term or _ignore)
        self._runs = runs
        self._run = RunDir(run_dir)
        self._held: deque[list[Any]] = deque()  # [call, ranks, outcomes still to come]
        self._idle_deaths = 0
        self._start()

    def _start(self) -> None:
        context = mp.get_context("fork")
        self._current = context.RawArray("d", 3)  # id, attempt, start of the running call
        self._current[0] = _NONE
        self._faults = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the process)
        parent, child = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_serve, name=f"hpcflow-worker-{self.index}", daemon=True,
            args=(child, self._setup, self.index, os.getpid(), self._current, self._faults))
        self.process.start()
        child.close()
        self.conn: Connection = parent

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether :meth:`receive` has something to take, waiting up to ``timeout``
        seconds (``select`` on the pipe: ``Connection.poll`` builds a selector per call)."""
        return bool(select.select((self.conn.fileno(),), (), (), timeout)[0])

    @property
    def busy(self) -> bool:
        """Whether it holds calls whose outcomes have not all come back."""
        return bool(self._held)

    def send(self, calls: list[tuple[Call, int]]) -> None:
        held = self._held
        for call, ranks in calls:
            held.append([call, ranks, call.count])
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            try:  # a dead process: receive() replaces it and resends these
                self.conn.send(calls)
            except (pickle.PicklingError, AttributeError, TypeError):  # a lambda argument
                self.conn.send_bytes(cloudpickle.dumps(calls))

    def receive(self) -> list[Outcome]:
        """The outcomes that have arrived (call when ``conn`` is ready); a death's FAILED."""
        try:
            items = self.conn.recv()
        except (EOFError, OSError):
            return self._replace()
        self._count_off(len(items))
        return [_new(Outcome, item) for item in items]

    def _count_off(self, n: int) -> None:
        held = self._held
        while n:
            entry = held[0]
            take = min(n, entry[2])
            entry[2] -= take
            n -= take
            if not entry[2]:
                held.popleft()

    def _replace(self) -> list[Outcome]:
        """Reap the dead process; FAIL the call it ran; a fresh one takes the others."""
        self.process.join(timeout=5)
        code = self.process.exitcode
        crashed = int(self._current[0]) if self._current[0] != _NONE else None
        attempt, start = int(self._current[1]), self._current[2]
        self._faults.seek(0)
        trace = self._faults.read().decode(errors="replace")
        self._faults.close()
        self.conn.close()
        rest, call = self._remaining(crashed)
        if call is None:
            self._idle_deaths += 1
            if self._idle_deaths > MAX_IDLE_DEATHS:
                raise EngineError(f"worker {self.index}'s task process {describe_exit(code)} "
                                  f"{self._idle_deaths} times outside any task")
        else:
            self._idle_deaths = 0
        self._start()
        if rest:
            self.send(rest)
        if call is None:
            return []
        return [self._crash_outcome(call._replace(attempt=attempt), start, code, trace)]

    def _remaining(self, crashed: int | None) -> tuple[list[tuple[Call, int]], Call | None]:
        """The calls the dead process held but ``crashed`` (runs as their members), and
        the call of ``crashed``."""
        rest: list[tuple[Call, int]] = []
        found: Call | None = None
        for call, ranks, left in self._held:
            if call.count == 1:
                calls = [(call, ranks)]
            else:
                first = call.id + call.count - left
                members = expand(self._runs[call.group], call._replace(id=first, count=left))
                calls = [(c, 1) for c in members]
            for c, r in calls:
                if c.id == crashed and found is None:
                    found = c
                else:
                    rest.append((c, r))
        self._held.clear()
        return rest, found

    def _crash_outcome(self, call: Call, start: float, code: int | None, trace: str) -> Outcome:
        """The FAILED outcome of a call whose process died, its log written."""
        error = f"task {call.name} crashed: its process {describe_exit(code)}"
        log: str | None = None
        try:
            path = self._run.task_dir(call.name) / "error.log"
            path.write_text(f"{error}\n\n{trace}" if trace else f"{error}\n")
            log = str(path)
        except OSError:
            pass
        return Outcome(call.id, call.attempt, False, None, start, time.time(), self.index,
                       error=error, log=log)

    def ask_to_stop(self) -> None:
        """Tell it to end once the call it runs (if any) is done."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(None)

    def stop(self) -> None:
        """End it (asked first); its whole process tree if it does not within a second."""
        self.ask_to_stop()
        self.process.join(timeout=1)
        if self.process.is_alive():
            kill_tree(self.process.pid)
            self.process.join(timeout=5)
        self.conn.close()
        self._faults.close()

    def kill(self) -> list[tuple[Call, int]]:
        """End its process tree now (a stop signal); the calls it held, unreported (runs
        as their members)."""
        kill_tree(self.process.pid)
        self.process.join(timeout=5)
        self.conn.close()
        self._faults.close()
        return self._remaining(None)[0]


def _serve(conn: Connection, setup: tuple[Any, ...], index: int, parent: int,
           current: Any, faults: Any) -> None:
    """The task process's loop: run what comes, in order, until ``None``."""
    _die_with_parent()
    if os.getppid() != parent:  # the owner died before the request took effect
        os._exit(1)
    actions, runs, run_dir, python_path, launcher, on_term = setup
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides how to stop
    signal.signal(signal.SIGTERM, on_term)  # a Python handler: programs it starts get TERM
    faulthandler.enable(faults)  # a crash's traceback goes to the task's log, not the terminal
    executor = Executor(actions, run_dir, python_path, worker=index, launcher=launcher)
    run = RunDir(run_dir)
    pending: deque[tuple[Call, int]] = deque()
    while True:
        if not pending:
            message = conn.recv()
            if message is None:
                return
            _queue(pending, message, runs)
        done: list[tuple[Any, ...]] = []
        while pending:
            call, ranks = pending.popleft()
            current[1], current[2] = call.attempt, time.time()
            current[0] = call.id
            outcome = executor.run(call, ranks)
            if outcome.ok:
                outcome = persist(run, actions[call.group], outcome, call.fp)
            current[0] = _NONE
            done.append(tuple(outcome))
            if not pending and conn.poll():
                message = conn.recv()
                if message is None:
                    conn.send(done)
                    return
                _queue(pending, message, runs)
            if len(done) >= MAX_BATCH:
                break
        conn.send(done)


def tell_owner(signum: int, _frame: object) -> None:
    """A task process's SIGTERM handler: the signal is its owner's to act on."""
    os.kill(os.getppid(), signum)


def _ignore(_signum: int, _frame: object) -> None:
    pass


def _queue(pending: deque[tuple[Call, int]], message: list[tuple[Call, int]],
           runs: dict[int, RunSpec]) -> None:
    """Queue a message's calls, a run expanded into its members (engine/runs.py)."""
    for call, ranks in message:
        if call.count > 1:
            pending.extend((c, 1) for c in expand(runs[call.group], call))
        else:
            pending.append((call, ranks))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its owner dies (even by kill -9): a forked
    process holds copies of the owner's descriptors, the run lock included, and would
    otherwise keep the run looking alive."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
