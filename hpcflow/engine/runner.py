"""Run a workflow: flatten, check, make the run folder, start a backend, drive the core.

This is the one entry point the CLI and the Python API share; backends are chosen by
name (``local``, ``mpi``, ...) and built by small factories so that importing this
module never imports an optional engine's package.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hpcflow.engine.core import Backend, Core, RunOptions, RunResult, check_fits
from hpcflow.engine.local import LocalBackend, machine_shares
from hpcflow.errors import EngineError
from hpcflow.model.workflow import Workflow
from hpcflow.plan.analyse import analyse
from hpcflow.plan.flatten import flatten
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Slot
from hpcflow.store.rundir import RunDir


@dataclass
class EngineConfig:
    """How to run: which engine, how many workers, which GPUs, where the run folder goes."""

    engine: str = "local"
    workers: int | None = None
    gpus: Sequence[str] = ()
    memory: int | None = None
    run_dir: str | None = None
    runs_root: str | None = None
    options: RunOptions = field(default_factory=RunOptions)
    spec: str | None = None


BackendFactory = Callable[[Plan, RunDir, EngineConfig], tuple[Backend, list[Slot]]]


def _local_factory(plan: Plan, run: RunDir, config: EngineConfig) -> tuple[Backend, list[Slot]]:
    workers = config.workers or os.cpu_count() or 1
    slots = machine_shares(workers, config.gpus, config.memory)
    check_fits(plan, slots)
    return LocalBackend(plan, str(run.path), slots), slots


def _mpi_factory(plan: Plan, run: RunDir, config: EngineConfig) -> tuple[Backend, list[Slot]]:
    from hpcflow.engine.mpi.backend import start_backend

    return start_backend(plan, run, config)


BACKENDS: dict[str, BackendFactory] = {"local": _local_factory, "mpi": _mpi_factory}


def run_workflow(workflow: Workflow | Plan, config: EngineConfig | None = None) -> RunResult:
    """Run ``workflow`` to the end and return its outcome (outputs, failures, run folder)."""
    config = config or EngineConfig()
    if config.engine == "mpi":  # every rank calls this; only rank 0 comes back to _coordinate
        from hpcflow.engine.mpi import session

        return session.run(workflow, config, _coordinate)
    return _coordinate(workflow, config)


def _coordinate(workflow: Workflow | Plan, config: EngineConfig) -> RunResult:
    plan = workflow if isinstance(workflow, Plan) else flatten(workflow)
    if config.engine not in BACKENDS:
        raise EngineError(f"unknown engine '{config.engine}' (known: {', '.join(sorted(BACKENDS))})")
    analysis = analyse(plan)
    run = RunDir.create(plan.workflow, root=config.runs_root, path=config.run_dir)
    run.lock()
    info: dict[str, Any] = {"workflow": plan.workflow, "spec": config.spec,
                            "engine": config.engine, "created": time.time(),
                            "host": socket.gethostname(), "argv": sys.argv,
                            "tasks": plan.n, "status": "running"}
    run.write_info(info)
    run.save_plan(plan)
    try:
        backend, slots = BACKENDS[config.engine](plan, run, config)
    except BaseException:  # refused before anything ran (resources, engine): leave no trace
        run.unlock()
        run.discard()
        raise
    info["workers"] = len(slots)
    status = "error"
    try:
        with _sigterm_stops():
            core = Core(plan, analysis.priority.tolist(), backend, run, config.options)
            core.seed()
            result = core.run()
            status = result.status
    except KeyboardInterrupt:
        status = "stopped"
        raise
    finally:
        backend.shutdown()
        info.update(status=status, finished=time.time())
        run.write_info(info)
        run.unlock()
    return result


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C (journal ``end stopped``, workers stopped), unless
    someone (the MPI session) already handles it, or this is not the main thread."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
