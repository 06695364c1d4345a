"""The local backend: worker processes on this machine, no MPI needed.

Each worker is a task process (``engine/child.py``): forked, fed batches of calls over
a duplex pipe; it runs them one at a time, persists each result and takes its content
hash (``engine/results.py``, as every backend's workers do), and sends outcomes back in
batches (as soon as it has nothing more queued), so tiny tasks cost one message per
batch, not per task. A worker that dies (a segfault, an abort, the out-of-memory
killer) fails the task it ran, by name, signal and log, and a fresh one takes its
place and the rest of its queue. A worker owns an equal share of the machine:
``cores // workers`` cores, an equal part of the given GPU ids and of the memory.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from multiprocessing.connection import wait

import psutil

from hpcflow.engine.child import TaskProcess
from hpcflow.engine.execute import Call, Outcome
from hpcflow.engine.runs import run_specs
from hpcflow.errors import EngineError
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Placement, Slot


def machine_shares(workers: int, gpus: Sequence[str] = (), memory: int | None = None,
                   node: str | None = None, cores: int | None = None) -> list[Slot]:
    """``workers`` equal shares of one node's cores, GPU ids and memory."""
    total_cores = cores or os.cpu_count() or 1
    total_memory = memory if memory is not None else psutil.virtual_memory().total
    host = node or socket.gethostname()
    per_gpu = len(gpus) // workers if len(gpus) >= workers else 0
    slots = []
    for i in range(workers):
        share = tuple(gpus[i * per_gpu : (i + 1) * per_gpu]) if per_gpu else ()
        if not per_gpu and i < len(gpus):
            share = (gpus[i],)
        slots.append(Slot(i, host, max(1, total_cores // workers), share,
                          total_memory // workers))
    return slots


class LocalBackend:
    name = "local"
    runs = True  # workers expand runs of short tasks (engine/runs.py)

    def __init__(self, plan: Plan, run_dir: str, slots: Sequence[Slot]) -> None:
        self._slots = list(slots)
        self._ranks = plan.ranks
        for group in plan.groups:
            if group.task.resources.ranks > 1 and not hasattr(group.task.action, "command"):
                raise EngineError(f"task '{group.name}' is a Python task with "
                                  f"{group.task.resources.ranks} ranks: run it with the MPI "
                                  "engine (--engine mpi), which gives it a communicator")
        actions = [g.task.action for g in plan.groups]
        runs = run_specs(plan)
        self._workers = [TaskProcess(slot.index, actions, runs, run_dir, plan.python_path)
                         for slot in self._slots]

    def slots(self) -> list[Slot]:
        return self._slots

    def submit(self, batch: Sequence[tuple[Call, Placement]]) -> None:
        per_worker: dict[int, list[tuple[Call, int]]] = {}
        for call, placement in batch:
            leader = placement.leaders[0]
            per_worker.setdefault(leader, []).append((call, int(self._ranks[call.id])))
        for leader, calls in per_worker.items():
            self._workers[leader].send(calls)

    def wait(self, timeout: float | None) -> list[Outcome]:
        """Outcomes that have arrived; a worker that died is replaced, the task it ran
        reported FAILED (``engine/child.py``)."""
        workers = {id(w.conn): w for w in self._workers}
        outcomes: list[Outcome] = []
        for conn in wait([w.conn for w in self._workers], timeout):
            outcomes.extend(workers[id(conn)].receive())
        return outcomes

    def shutdown(self) -> None:
        """Idle workers exit at once; busy ones (an interrupt) are ended with their whole
        process tree, shell programs in their own sessions included."""
        for worker in self._workers:
            worker.ask_to_stop()
        for worker in self._workers:
            worker.stop()
