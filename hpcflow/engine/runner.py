"""Run a workflow: flatten, check, make the run folder, start a backend, drive the core.

This is the one entry point the CLI and the Python API share; backends are chosen by
name (``local``, ``mpi``, ...) and built by small factories so that importing this
module never imports an optional engine's package.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
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


BACKENDS: dict[str, BackendFactory] = {"local": _local_factory}


def run_workflow(workflow: Workflow | Plan, config: EngineConfig | None = None) -> RunResult:
    """Run ``workflow`` to the end and return its outcome (outputs, failures, run folder)."""
    config = config or EngineConfig()
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
    backend = None
    try:
        backend, slots = BACKENDS[config.engine](plan, run, config)
        info["workers"] = len(slots)
        core = Core(plan, analysis.priority.tolist(), backend, run, config.options)
        core.seed()
        result = core.run()
    finally:
        if backend is not None:
            backend.shutdown()
        info["status"] = result.status if backend is not None and "result" in locals() else "error"
        info["finished"] = time.time()
        run.write_info(info)
        run.unlock()
    return result
