"""The local backend: worker processes on this machine, no MPI needed.

Each worker is a forked process with a duplex pipe. The core hands it batches of
calls; it runs them one at a time, persists each result and takes its content hash
(``engine/results.py``, as every backend's workers do), and sends outcomes back in
batches (as soon as it has nothing more queued), so tiny tasks cost one message per
batch, not per task. A worker
owns an equal share of the machine: ``cores // workers`` cores, an equal part of the
given GPU ids and of the memory.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import socket
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait

import psutil

from hpcflow.engine.execute import Call, Executor, Outcome, kill_tree
from hpcflow.engine.results import persist
from hpcflow.engine.runs import RunSpec, expand, run_specs
from hpcflow.errors import EngineError
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Placement, Slot
from hpcflow.store.rundir import RunDir


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
        context = mp.get_context("fork")
        actions = [g.task.action for g in plan.groups]
        runs = run_specs(plan)
        self._conns: list[Connection] = []
        self._procs = []
        for slot in self._slots:
            parent, child = context.Pipe(duplex=True)
            proc = context.Process(target=_worker_main, name=f"hpcflow-worker-{slot.index}",
                                   args=(child, actions, runs, run_dir, plan.python_path,
                                         slot.index, os.getpid()),
                                   daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._by_conn = {id(c): i for i, c in enumerate(self._conns)}

    def slots(self) -> list[Slot]:
        return self._slots

    def submit(self, batch: Sequence[tuple[Call, Placement]]) -> None:
        per_worker: dict[int, list[tuple[Call, int]]] = {}
        for call, placement in batch:
            leader = placement.leaders[0]
            per_worker.setdefault(leader, []).append((call, int(self._ranks[call.id])))
        for leader, calls in per_worker.items():
            self._conns[leader].send(calls)

    def wait(self, timeout: float | None) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for conn in wait(self._conns, timeout):
            try:
                outcomes.extend(conn.recv())  # type: ignore[union-attr]
            except EOFError:
                index = self._by_conn[id(conn)]
                code = self._procs[index].exitcode
                raise EngineError(f"local worker {index} died (exit code {code})") from None
        return outcomes

    def shutdown(self) -> None:
        """Idle workers exit at once; busy ones (an interrupt) are ended with their whole
        process tree, shell programs in their own sessions included."""
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=1)
            if proc.is_alive():
                kill_tree(proc.pid)
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its coordinator dies (even by kill -9): a
    forked worker holds copies of the coordinator's descriptors, the run lock included,
    and would otherwise keep the run looking alive."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(conn: Connection, actions: list, runs: dict[int, RunSpec], run_dir: str,
                 python_path: list[str], index: int, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the coordinator died before the request took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides how to stop
    executor = Executor(actions, run_dir, python_path, worker=index)
    run = RunDir(run_dir)
    pending: deque[tuple[Call, int]] = deque()
    while True:
        if not pending:
            message = conn.recv()
            if message is None:
                return
            _queue(pending, message, runs)
        done: list[Outcome] = []
        while pending:
            call, ranks = pending.popleft()
            outcome = executor.run(call, ranks)
            done.append(persist(run, actions[call.group], outcome, call.fp) if outcome.ok
                        else outcome)
            if not pending and conn.poll():
                message = conn.recv()
                if message is None:
                    conn.send(done)
                    return
                _queue(pending, message, runs)
            if len(done) >= 256:
                break
        conn.send(done)


def _queue(pending: deque[tuple[Call, int]], message: list[tuple[Call, int]],
           runs: dict[int, RunSpec]) -> None:
    """Queue a message's calls, a run expanded into its members (engine/runs.py)."""
    for call, ranks in message:
        if call.count > 1:
            pending.extend((c, 1) for c in expand(runs[call.group], call))
        else:
            pending.append((call, ranks))
