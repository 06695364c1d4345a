"""Which MPI launch started this process, so that ``mpiexec -n N hpcflow run WF`` is one
run on N ranks, never N copies of the run.

The launcher's own variables say it, read without importing mpi4py (whose import starts
MPI): ``PMI_SIZE``/``PMI_RANK`` (MPICH's Hydra, Intel MPI, ``srun --mpi=pmi2``),
``OMPI_COMM_WORLD_SIZE``/``OMPI_COMM_WORLD_RANK`` (Open MPI), and inside a Slurm job
step (``SLURM_STEP_ID`` set by ``srun``, never by the batch script)
``SLURM_STEP_NUM_TASKS``/``SLURM_PROCID``. Where mpi4py is already imported, its
``COMM_WORLD`` is asked instead.

A process that a launched rank starts inherits those variables without being a rank:
a task's program, a ``subprocess`` of a test. Two guards keep it from taking itself
for one: PMI's variables count only while the PMI connection they name is open in this
process (``PMI_FD``, which ``subprocess`` does not pass on; ``PMI_PORT``, which the MPI
worker drops for its tasks), and every run marks its processes (``HPCFLOW_IN_RUN``)
for as long as it runs, so that an ``hpcflow run`` started by a task is a run of its
own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from hpcflow.errors import HpcflowError

IN_RUN = "HPCFLOW_IN_RUN"


@dataclass(frozen=True)
class Launch:
    """This process is rank ``rank`` of ``size`` that ``launcher`` started."""

    launcher: str
    size: int
    rank: int


class LaunchConflict(HpcflowError):
    """An engine other than MPI was asked for under a multi-rank launch: each rank would
    run the whole workflow."""

    exit_code = 2

    def __init__(self, launch: Launch, engine: str) -> None:
        self.launch = launch
        self.engine = engine
        super().__init__(
            f"{launch.launcher} started {launch.size} ranks, and the {engine} engine would run "
            f"the workflow once on each: leave the engine out (or ask for mpi) to run it once "
            f"on these ranks, or start hpcflow without {launch.launcher}")


def mpi_launch(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch of more than one rank that this process is part of, or None."""
    env = os.environ if env is None else env
    if env.get(IN_RUN):
        return None
    launch = _from_mpi4py() or _from_env(env)
    return launch if launch is not None and launch.size > 1 else None


def choose_engine(requested: str | None, env: Mapping[str, str] | None = None) -> str:
    """The engine to run with: MPI under a multi-rank launch (another engine asked for
    there is a :class:`LaunchConflict`), else the one asked for, else local."""
    launch = mpi_launch(env)
    if launch is None:
        return requested or "local"
    if requested in (None, "mpi"):
        return "mpi"
    raise LaunchConflict(launch, requested)


def launch_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank in its multi-rank launch; 0 when there is none."""
    launch = mpi_launch(env)
    return 0 if launch is None else launch.rank


@contextmanager
def marked_as_running() -> Iterator[None]:
    """While a run runs, the processes it starts are not ranks of a launch of their own."""
    before = os.environ.get(IN_RUN)
    os.environ[IN_RUN] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(IN_RUN, None)
        else:
            os.environ[IN_RUN] = before


def _from_env(env: Mapping[str, str]) -> Launch | None:
    srun = bool(env.get("SLURM_STEP_ID"))
    if env.get("PMI_SIZE") and _pmi_connected(env):
        return _launch("srun" if srun else "mpiexec", env["PMI_SIZE"], env.get("PMI_RANK"))
    if env.get("OMPI_COMM_WORLD_SIZE"):
        return _launch("srun" if srun else "mpirun", env["OMPI_COMM_WORLD_SIZE"],
                       env.get("OMPI_COMM_WORLD_RANK"))
    if srun and env.get("SLURM_STEP_NUM_TASKS"):
        return _launch("srun", env["SLURM_STEP_NUM_TASKS"], env.get("SLURM_PROCID"))
    return None


def _pmi_connected(env: Mapping[str, str]) -> bool:
    if env.get("PMI_PORT"):
        return True
    try:
        os.fstat(int(env.get("PMI_FD", "")))
    except (ValueError, OSError):
        return False
    return True


def _launch(launcher: str, size: str, rank: str | None) -> Launch | None:
    try:
        return Launch(launcher, int(size), int(rank or 0))
    except ValueError:
        return None


def _from_mpi4py() -> Launch | None:
    module = sys.modules.get("mpi4py.MPI")
    if module is None or not module.Is_initialized() or module.Is_finalized():
        return None
    world = module.COMM_WORLD
    return Launch("the MPI launcher", world.Get_size(), world.Get_rank())
