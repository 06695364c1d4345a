"""A worker rank: take calls from rank 0, run them one at a time, send outcomes back.

The rank runs its tasks in a task process of its own (``engine/child.py``) and only
relays: under MPICH a rank that dies ends every rank, so a task that crashes must not
crash the rank. It passes the calls that have arrived on to the process in one message
and sends each batch of outcomes that comes back on to rank 0. A task process that
dies fails the task it ran (its name, the signal, its log) and is replaced. A Python
task with ``ranks > 1`` runs in the rank itself (it needs the communicator), once the
task process has finished what it holds, so it cannot fail alone. Without a task
process (``HPCFLOW_MPI_TASK_PROCESS=0``) the rank runs every task itself, as follows.

The loop keeps a local queue (``pending``) that the coordinator fills several calls deep
when tasks are short; a run of a sweep's members arrives as one call and is expanded
into the queue here (``engine/runs.py``). Between two tasks the worker takes every message that has arrived
(``improbe``: no blocking); it sends its finished outcomes back in one message as soon
as its queue is empty, as soon as it has finished as many as it still has queued (so
the coordinator refills the queue before it runs dry), or once the oldest unsent one
is a millisecond old. Idle, it polls with the shared back-off, never spinning.

A task with ``ranks: k`` arrives on each of its k worker ranks (Python) or on its
leader alone (shell: the leader starts k processes with the launcher). Python ranks
build the task's communicator with ``COMM_WORLD.Create_group`` (collective over those k
ranks only) and pass it as the keyword argument ``comm`` when the function has a
parameter of that name; task-rank 0's return value is the task's result.

Results larger than the journal's inline limit are written by this worker to
``results/<id>.pkl`` before the outcome leaves, which then names the file; the value
itself travels to rank 0 out of band (``channel.py``) for the tasks that read it.
Smaller results travel inline. Either way the worker takes the result's content hash
(``engine/results.py``), so rank 0 neither pickles nor hashes results.

SIGINT/SIGTERM (``mpiexec`` forwards them to every rank) interrupt a running task,
which is reported as failed; from then on the worker starts nothing new (a call that
was already on its way fails at once, so a coordinator that got no signal sees failures,
not a hang) and waits for rank 0's ``STOP``.
"""

from __future__ import annotations

import inspect
import signal
import time
from collections import deque
from typing import Any

from mpi4py import MPI

from hpcflow.engine.child import TaskProcess
from hpcflow.engine.execute import Call, Executor, Outcome, end_children, resolve_target
from hpcflow.engine.mpi.channel import Channel
from hpcflow.engine.mpi.wire import (
    BYE,
    CALLS,
    OUTCOMES,
    STOP,
    Backoff,
    Interrupted,
    read_call,
)
from hpcflow.engine.results import persist
from hpcflow.engine.runs import RunSpec, expand
from hpcflow.model.task import Action, MethodCall, PythonCall, ShellCommand
from hpcflow.store.rundir import RunDir

SEND_AFTER = 0.001
"""Seconds after which finished outcomes go back even if more tasks are queued."""
MAX_OUTCOMES = 256


class Worker:
    def __init__(self, wire: Channel, world: MPI.Intracomm, executor: Executor,
                 actions: list[Action], run_dir: str, backoff: Backoff,
                 runs: dict[int, RunSpec] | None = None, child: TaskProcess | None = None,
                 ) -> None:
        self.wire, self.world, self.executor = wire, world, executor
        self.actions = actions
        self.index = world.rank - 1
        self.run_dir = RunDir(run_dir)
        self.backoff = backoff
        self.pending: deque[tuple[Call, int, int]] = deque()  # (call, ranks, task_rank)
        self.runs = runs or {}
        self.done: list[tuple[Any, ...]] = []  # outcomes as plain tuples
        self.batch_start = 0.0
        self.in_task = False
        self.signalled: int | None = None
        self._accepts_comm: dict[int, bool] = {}
        self._requests: list[MPI.Request] = []  # outcome isends not yet complete
        self.child = child  # runs the one-rank tasks (engine/child.py); None: this rank does

    # -- the loop -------------------------------------------------------------------
    def serve(self) -> None:
        """Run calls until rank 0 says STOP; then answer BYE (nothing more follows)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            backoff = self.backoff
            while not self._receive():
                if self._step():
                    backoff.reset()
                    continue
                if self.done:
                    self._send()
                if self.child is not None and self.child.busy:
                    backoff.sleep_on(self.child.ready)
                else:
                    backoff.sleep()
            self._requests.extend(self.wire.isend(None, 0, BYE))
            while not MPI.Request.Testall(self._requests):
                backoff.sleep()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.child is not None:
                self.child.stop()

    def _step(self) -> bool:
        """Relay to and from the task process, or run a task here; False if idle."""
        child = self.child
        if child is None:
            if not self.pending:
                return False
            self._run_next()
            if self._should_send():
                self._send()
            return True
        if self.signalled is not None and child.busy:
            self._fail_held(child)
        if child.busy and child.ready():
            self.done.extend(map(tuple, child.receive()))
            self._send()
            return True
        return self._feed(child)

    def _feed(self, child: TaskProcess) -> bool:
        """Pass the queued one-rank calls to the task process; run a multi-rank Python
        task here once the process has finished what it holds (queue order is kept)."""
        pending = self.pending
        batch: list[tuple[Call, int]] = []
        while pending and self.signalled is None and self._in_child(pending[0]):
            call, ranks, _ = pending.popleft()
            batch.append((call, ranks))
        if batch:
            child.send(batch)
            return True
        if not pending or child.busy:
            return False
        self._run_next()
        if self._should_send():
            self._send()
        return True

    def _in_child(self, item: tuple[Call, int, int]) -> bool:
        call, ranks, _ = item
        return ranks == 1 or isinstance(self.actions[call.group], ShellCommand)

    def _fail_held(self, child: TaskProcess) -> None:
        """A stop signal: end the task process's tree; what it held fails as interrupted."""
        assert self.signalled is not None
        error, now = str(Interrupted(self.signalled)), time.time()
        for call, _ in child.kill():
            self.done.append(tuple(Outcome(call.id, call.attempt, False, None, now, now,
                                           self.index, error=error)))

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signalled = signum
        if self.in_task:
            raise Interrupted(signum)

    def _receive(self) -> bool:
        """Queue every call that has arrived; True once STOP came (the queue is dropped)."""
        while True:
            got = self.wire.poll(0, MPI.ANY_TAG)
            if got is None:
                return False
            payload, _, tag = got
            if tag == STOP:
                self.pending.clear()
                return True
            if tag == CALLS:
                pending = self.pending
                for item in payload:
                    call, ranks, task_rank = read_call(item)
                    if call.count > 1 and self.child is None:  # a run: its members, bound here
                        pending.extend((c, 1, 0) for c in expand(self.runs[call.group], call))
                    else:
                        pending.append((call, ranks, task_rank))

    def _should_send(self) -> bool:
        n = len(self.done)
        return (n >= len(self.pending) or n >= MAX_OUTCOMES
                or time.monotonic() - self.batch_start >= SEND_AFTER)

    def _send(self) -> None:
        """Send the finished outcomes without waiting for rank 0 to take them."""
        if self._requests and MPI.Request.Testall(self._requests):
            self._requests.clear()
        self._requests.extend(self.wire.isend(self.done, 0, OUTCOMES))
        self.done = []

    # -- one task -------------------------------------------------------------------
    def _run_next(self) -> None:
        call, ranks, task_rank = self.pending.popleft()
        if call.count > 1:  # a run that came for the task process after a stop signal
            self.pending.extendleft((c, 1, 0) for c in reversed(expand(self.runs[call.group],
                                                                       call)))
            return
        if not self.done:
            self.batch_start = time.monotonic()
        outcome = self._run(call, ranks, task_rank)
        if task_rank:
            outcome = outcome._replace(value=None)  # task-rank 0's value is the result
        elif outcome.ok:
            outcome = persist(self.run_dir, self.actions[call.group], outcome, call.fp)
        self.done.append(tuple(outcome))

    def _run(self, call: Call, ranks: int, task_rank: int) -> Outcome:
        start = time.time()
        if self.signalled is not None:  # told to stop: start nothing new
            return Outcome(call.id, call.attempt, False, None, start, start, self.index,
                           error=str(Interrupted(self.signalled)))
        comm = None
        if ranks > 1 and not isinstance(self.actions[call.group], ShellCommand):
            comm = self._task_comm(call)
            if self._takes_comm(call.group):
                call = call._replace(kwargs={**call.kwargs, "comm": comm})
        self.in_task = True
        try:
            return self.executor.run(call, ranks)
        except Interrupted as exc:
            end_children()
            return Outcome(call.id, call.attempt, False, None, start, time.time(), self.index,
                           error=str(exc))
        finally:
            self.in_task = False
            if comm is not None:
                comm.Free()

    def _task_comm(self, call: Call) -> MPI.Intracomm:
        """The communicator of exactly the task's ranks, in task-rank order."""
        group = self.world.Get_group()
        members = group.Incl([p + 1 for p in call.peers])
        try:
            return self.world.Create_group(members, call.id % 32768)
        finally:
            members.Free()
            group.Free()

    def _takes_comm(self, group: int) -> bool:
        if group not in self._accepts_comm:
            action = self.actions[group]
            try:
                if isinstance(action, MethodCall):
                    target = getattr(resolve_target(action.cls), action.method)
                else:
                    assert isinstance(action, PythonCall)
                    target = resolve_target(action.target)
                takes = "comm" in inspect.signature(target).parameters
            except (TypeError, ValueError, ImportError, AttributeError):
                takes = False  # the executor reports an unresolvable target itself
            self._accepts_comm[group] = takes
        return self._accepts_comm[group]
