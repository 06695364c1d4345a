"""The coordinator side of the MPI engine: the shared core's :class:`Backend` on rank 0.

Worker rank ``r`` is slot ``r - 1``. :func:`start_backend` (rank 0) and
:func:`serve_setup` (the other ranks) run step 2 of the session's sequence: set-up
broadcast, node discovery, slot gather, ``check_fits``, verdict.

``submit`` groups a batch of calls by leader slot and sends each group as one message
with a nonblocking ``isend`` (the coordinator never waits for a busy worker, even for
a large argument); a ``ranks: k`` Python task goes to all k leaders (each with its own
GPU ids and its task-rank), a ``ranks: k`` shell task to its first leader alone (the
other slots are held idle while the launcher's processes use them). ``wait`` polls
with ``improbe`` and the back-off, takes every outcome message that has arrived, and
folds the k outcomes of a multi-rank task into one (task-rank 0's value; the first
failure if any rank failed; the largest rank's measured memory). ``shutdown`` sends
``STOP`` to every worker and takes (and drops) what they still send until each has
answered ``BYE``, so that no rank is left blocked in a send when the ranks meet for the
final broadcast.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cloudpickle
from mpi4py import MPI

from hpcflow.engine.child import TaskProcess, tell_owner
from hpcflow.engine.core import check_fits
from hpcflow.engine.execute import Call, Executor, Outcome
from hpcflow.engine.memory import larger
from hpcflow.engine.mpi.channel import Channel
from hpcflow.engine.mpi.discover import discover_slot, node_view
from hpcflow.engine.mpi.launch import forget_pmi, task_launcher
from hpcflow.engine.mpi.session import Session, current_session
from hpcflow.engine.mpi.wire import (
    BYE,
    CALLS,
    OUTCOMES,
    STOP,
    call_item,
    polite_bcast,
    read_outcomes,
)
from hpcflow.engine.mpi.worker import Worker
from hpcflow.engine.runs import run_specs
from hpcflow.errors import EngineError
from hpcflow.model.task import ShellCommand
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Placement, Slot
from hpcflow.store.rundir import RunDir

if TYPE_CHECKING:
    from hpcflow.engine.runner import EngineConfig

MAX_MESSAGES_PER_WAIT = 64


class MpiBackend:
    name = "mpi"
    runs = True  # workers expand runs of short tasks (engine/runs.py)

    def __init__(self, session: Session, wire: Channel, plan: Plan, slots: list[Slot]) -> None:
        self._session, self._wire, self._slots = session, wire, slots
        self._ranks = plan.ranks.tolist()
        self._shell = [isinstance(g.task.action, ShellCommand) for g in plan.groups]
        self._requests: list[MPI.Request] = []  # isends not yet complete
        self._parts: dict[tuple[int, int], list[Any]] = {}  # multi-rank tasks being folded
        self._backoff = session.backoff

    def slots(self) -> list[Slot]:
        return self._slots

    def submit(self, batch: Sequence[tuple[Call, Placement]]) -> None:
        per_worker: dict[int, list[tuple[Any, ...]]] = {}
        ranks, shell = self._ranks, self._shell
        for call, placement in batch:
            k = ranks[call.id]
            if k == 1:
                per_worker.setdefault(placement.leaders[0], []).append((1, 0, *call))
            elif shell[call.group]:
                every_gpu = tuple(g for gpus in placement.gpus for g in gpus)
                per_worker.setdefault(placement.leaders[0], []).append(
                    call_item(call._replace(gpus=every_gpu), k))
            else:
                self._parts[(call.id, call.attempt)] = [k, placement.leaders[0], None, None]
                for r, leader in enumerate(placement.leaders):
                    per_worker.setdefault(leader, []).append(
                        call_item(call._replace(gpus=placement.gpus[r]), k, r))
        for leader, calls in per_worker.items():
            self._requests.extend(self._wire.isend(calls, leader + 1, CALLS))

    def wait(self, timeout: float | None) -> list[Outcome]:
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = self._backoff
        backoff.reset()
        while True:
            outcomes = self._drain()
            if outcomes:
                return outcomes
            self._session.stop.check()
            if deadline is not None and time.monotonic() >= deadline:
                return []
            backoff.sleep()

    def _drain(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        wire = self._wire
        for _ in range(MAX_MESSAGES_PER_WAIT):
            got = wire.poll(MPI.ANY_SOURCE, OUTCOMES)
            if got is None:
                break
            received = read_outcomes(got[0])
            if self._parts:
                received = [o for o in map(self._fold, received) if o is not None]
            outcomes.extend(received)
        if self._requests and MPI.Request.Testall(self._requests):
            self._requests.clear()
        return outcomes

    def _fold(self, outcome: Outcome) -> Outcome | None:
        """One rank's outcome of a multi-rank task: the task's outcome once all are in
        (with the measured memory of its largest rank)."""
        part = self._parts.get((outcome.id, outcome.attempt))
        if part is None:
            return outcome
        part[0] -= 1
        chosen = part[2]
        first_failure = not outcome.ok and (chosen is None or chosen.ok)
        if first_failure or (chosen is None and outcome.worker == part[1]):
            part[2] = outcome
        part[3] = larger(part[3], outcome.memory)
        if part[0]:
            return None
        del self._parts[(outcome.id, outcome.attempt)]
        return part[2]._replace(memory=part[3])

    def shutdown(self) -> None:
        """STOP every worker; drop what they still send until each said BYE."""
        wire, backoff = self._wire, self._backoff
        workers = self._session.world.size - 1
        for rank in range(1, workers + 1):
            self._requests.extend(wire.isend(None, rank, STOP))
        byes = 0
        backoff.reset()
        while byes < workers or self._requests:
            got = wire.poll(MPI.ANY_SOURCE, MPI.ANY_TAG)
            if got is not None:
                byes += got[2] == BYE
                backoff.reset()
                continue
            if MPI.Request.Testall(self._requests):
                self._requests.clear()
            backoff.sleep()
        wire.free()


def start_backend(plan: Plan, run: RunDir, config: EngineConfig) -> tuple[MpiBackend, list[Slot]]:
    """Rank 0's side of the set-up (see the session's sequence); the runner's factory."""
    session = current_session()
    world = session.world
    session.stop.deferred = True  # from here on a signal is handled at a safe point
    setup = {"actions": cloudpickle.dumps([g.task.action for g in plan.groups]),
             "runs": cloudpickle.dumps(run_specs(plan)),
             "python_path": list(plan.python_path), "run_dir": str(run.path),
             "gpus": tuple(config.gpus), "memory": config.memory}
    polite_bcast(world, ("setup", setup), session.backoff)
    wire = Channel(world.Dup())
    node_view(world)
    reports = world.gather(None, root=0)
    slots: list[Slot] = []
    error: Exception | None = None
    try:
        problems = [r for r in reports[1:] if isinstance(r, str)]
        if problems:
            raise EngineError("worker set-up failed: " + "; ".join(problems))
        slots = list(reports[1:])
        check_fits(plan, slots)
    except Exception as exc:
        error = exc
    world.bcast(error is None, root=0)
    if error is not None:
        wire.free()
        raise error
    return MpiBackend(session, wire, plan, slots), slots


def serve_setup(session: Session, setup: dict[str, Any]) -> None:
    """A worker's side of the set-up, then its serve loop if rank 0 says go."""
    world = session.world
    executor: Executor | None = None
    try:
        actions = cloudpickle.loads(setup["actions"])
        forget_pmi(os.environ)
        executor = Executor(actions, setup["run_dir"], setup["python_path"],
                            worker=world.rank - 1, launcher=task_launcher(session.settings))
    except Exception as exc:
        report: Slot | str = f"rank {world.rank}: {type(exc).__name__}: {exc}"
    wire = Channel(world.Dup())
    view = node_view(world)
    if executor is not None:
        try:
            report = discover_slot(view, world.rank - 1, session.settings, setup["gpus"],
                                   setup["memory"])
        except Exception as exc:
            report = f"rank {world.rank} ({view.node}): cannot size its share: {exc}"
    world.gather(report, root=0)
    try:
        if world.bcast(None, root=0):
            assert executor is not None
            runs = cloudpickle.loads(setup["runs"])
            child = (TaskProcess(world.rank - 1, actions, runs, setup["run_dir"],
                                 setup["python_path"], executor.launcher, tell_owner)
                     if session.settings.task_process else None)
            Worker(wire, world, executor, actions, setup["run_dir"], session.backoff, runs,
                   child).serve()
    finally:
        wire.free()
