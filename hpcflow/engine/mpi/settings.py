"""The MPI engine's tunables, read from the environment in this one place.

Every knob has a safe default; none is needed on a workstation or in a Slurm job.

``HPCFLOW_MPI_BACKOFF``
    Longest sleep, in seconds, of a rank that polls for messages (default 0.001). Ranks
    wait with ``Iprobe`` and an exponential back-off (no sleep at first, then 1 µs
    doubling, a tenth of this for the first 10x this, then this), as ``mpi4py.futures``
    does, so that an idle coordinator or worker never steals a core from a busy one on
    an oversubscribed node (``wire.Backoff``).
``HPCFLOW_MPIEXEC``
    The ``mpiexec`` used to relaunch ``hpcflow run --engine mpi --workers K`` and to
    start multi-rank shell tasks outside Slurm (default: ``mpiexec`` on ``PATH``).
``HPCFLOW_LAUNCHER``
    Command prefix for a multi-rank shell task, ``{ranks}`` standing for its rank
    count, e.g. ``mpiexec -launcher fork -n {ranks}``. Default: ``mpiexec -n {ranks}``
    outside Slurm; inside an allocation the nested-step recipe of ``launch.py``.
``HPCFLOW_CORES_PER_WORKER``
    Cores of each worker's share when neither Slurm (``SLURM_CPUS_PER_TASK``) nor the
    default (the node's cores divided by its worker ranks) is right.
``HPCFLOW_MPI_TASK_PROCESS``
    ``1`` (default): each worker rank runs its one-rank tasks in a long-lived task
    process of its own (``engine/child.py``), so that a task that crashes fails alone
    instead of ending every rank; ``0``: in the rank itself (for measuring what the
    task process costs).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from hpcflow.errors import EngineError


@dataclass(frozen=True)
class Settings:
    backoff: float = 0.001
    mpiexec: str | None = None
    launcher: str | None = None
    cores_per_worker: int | None = None
    task_process: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        cores = env.get("HPCFLOW_CORES_PER_WORKER")
        try:
            return cls(
                backoff=float(env.get("HPCFLOW_MPI_BACKOFF", "0.001")),
                mpiexec=env.get("HPCFLOW_MPIEXEC") or None,
                launcher=env.get("HPCFLOW_LAUNCHER") or None,
                cores_per_worker=int(cores) if cores else None,
                task_process=_flag(env.get("HPCFLOW_MPI_TASK_PROCESS", "1")),
            )
        except ValueError as exc:
            raise EngineError(f"bad HPCFLOW_* setting for the MPI engine: {exc}") from None

    def mpiexec_path(self) -> str:
        """The ``mpiexec`` to run, or a clear error naming how to get one."""
        found = self.mpiexec or shutil.which("mpiexec")
        if not found:
            raise EngineError("mpiexec not found: install the mpich wheel (pip install mpich), "
                              "load your site's MPI module, or set HPCFLOW_MPIEXEC")
        return found


def _flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"HPCFLOW_MPI_TASK_PROCESS must be 0 or 1, not {text!r}")
    return text == "1"
