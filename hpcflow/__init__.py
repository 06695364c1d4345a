"""hpcflow: an MPI-backed workflow engine for batch HPC clusters.

Build a workflow by calling task functions (nothing runs until asked), then run it::

    import hpcflow as hf

    @hf.task(cores=1, memory="500M", time="2m")
    def simulate(alpha, seed): ...

    runs = simulate.sweep({"alpha": [0.1, 0.2, 0.4]}, seed=1)
    wf = hf.workflow("demo", outputs={"runs": runs.all()})
    result = hf.run(wf)                      # local worker processes; under mpiexec -n N,
                                             # the MPI engine: rank 0 coordinates

Layers (one sub-package each): ``model``/``spec``/``plan`` (orchestrator), ``engine``
(shared core and backends), ``scheduler`` (Slurm), ``store`` (run folder, journal),
``report`` and ``cli``.
"""

from __future__ import annotations

from typing import Any

from hpcflow.engine.core import RunOptions, RunResult
from hpcflow.engine.launched import LaunchConflict
from hpcflow.errors import (
    CycleError,
    EngineError,
    HpcflowError,
    ResourceError,
    RunFailed,
    RunInterrupted,
    SpecError,
    TaskFailed,
)
from hpcflow.model import (
    REQUIRED,
    Resources,
    TaskFunction,
    TaskRef,
    Workflow,
    method,
    nested,
    param,
    shell,
    task,
    workflow,
)

__version__ = "0.1.0"


def run(wf: Workflow, *, engine: str | None = None, workers: int | None = None,
        gpus: tuple[str, ...] = (), run_dir: str | None = None, runs_root: str | None = None,
        keep_going: bool = True, fsync: bool = False, check: bool = True,
        **engine_options: Any) -> RunResult:
    """Run ``wf`` and return its :class:`RunResult`; with ``check`` a failed run raises
    :class:`RunFailed` (its ``failures`` name each task and its log). ``engine`` left out
    is ``"mpi"`` in a script started by ``mpiexec -n N`` (N > 1; every rank calls this,
    rank 0 coordinates), else ``"local"``; another engine under such a launch is refused
    (:class:`LaunchConflict`), since each rank would run it."""
    from hpcflow.engine.runner import EngineConfig, run_workflow

    config = EngineConfig(engine=engine, workers=workers, gpus=gpus, run_dir=run_dir,
                          runs_root=runs_root, options=RunOptions(keep_going=keep_going, fsync=fsync),
                          **engine_options)
    result = run_workflow(wf, config)
    if check and result.status != "succeeded":
        raise RunFailed(result.failures, result.skipped, result.run_dir)
    return result


__all__ = [
    "REQUIRED",
    "CycleError",
    "EngineError",
    "HpcflowError",
    "LaunchConflict",
    "ResourceError",
    "Resources",
    "RunFailed",
    "RunInterrupted",
    "RunOptions",
    "RunResult",
    "SpecError",
    "TaskFailed",
    "TaskFunction",
    "TaskRef",
    "Workflow",
    "method",
    "nested",
    "param",
    "run",
    "shell",
    "task",
    "workflow",
]
