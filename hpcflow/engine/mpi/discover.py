"""Where a worker rank runs and which share of its node it owns.

Each worker rank finds its node (``MPI.Get_processor_name``) and the other ranks on it
(``COMM_WORLD.Split_type(COMM_TYPE_SHARED)``; rank 0, the coordinator, takes no
share), then takes an equal part of the node. In order of precedence:

- cores: ``HPCFLOW_CORES_PER_WORKER``, else Slurm's ``SLURM_CPUS_PER_TASK``, else the
  node's cores (``SLURM_CPUS_ON_NODE`` or ``os.cpu_count()``) divided by its worker ranks;
- GPUs: the ids given as an option (``--gpus 0,1``: the ids of every node), else the
  ids this process can see: ``CUDA_VISIBLE_DEVICES`` first (Slurm sets it to the ids
  CUDA sees inside the job's device cgroup, which may differ from the node-global ids
  of ``SLURM_JOB_GPUS``), then ``SLURM_STEP_GPUS``, then ``SLURM_JOB_GPUS``; split among
  the node's worker ranks. Under ``--gpus-per-task`` Slurm already gave each rank its
  own ``CUDA_VISIBLE_DEVICES``, which is then the share as it is;
- memory: the option (bytes per node), else ``SLURM_MEM_PER_NODE`` (per node, split)
  or ``SLURM_MEM_PER_CPU`` (times the share's cores), else the node's memory, split.

:func:`share` is pure (environment and machine figures in, share out) so that every
rule is tested without MPI or Slurm; :func:`discover_slot` adds the MPI part.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpcflow.engine.mpi.settings import Settings
from hpcflow.plan.policy import Slot

if TYPE_CHECKING:
    from mpi4py import MPI

_MB = 2**20


@dataclass(frozen=True)
class NodeView:
    """This rank's node: its name, how many worker ranks share it, and this rank's
    position among them (-1 for the coordinator)."""

    node: str
    workers: int
    local_index: int


@dataclass(frozen=True)
class Machine:
    """The node as this process sees it."""

    cpus: int
    memory: int  # bytes


def split_ids(ids: Sequence[str], workers: int, index: int) -> tuple[str, ...]:
    """Worker ``index``'s part of ``ids`` (equal parts; with fewer ids than workers, the
    first workers get one each and the others none)."""
    if index < 0 or not ids:
        return ()
    per = len(ids) // max(1, workers)
    if per:
        return tuple(ids[index * per : (index + 1) * per])
    return (ids[index],) if index < len(ids) else ()


def _id_list(text: str | None) -> list[str]:
    if not text or text == "NoDevFiles":
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def _cores(view: NodeView, env: Mapping[str, str], settings: Settings, machine: Machine) -> int:
    if settings.cores_per_worker:
        return settings.cores_per_worker
    if env.get("SLURM_CPUS_PER_TASK"):
        return max(1, int(env["SLURM_CPUS_PER_TASK"]))
    node_cpus = int(env.get("SLURM_CPUS_ON_NODE") or machine.cpus)
    return max(1, node_cpus // max(1, view.workers))


def _gpus(view: NodeView, env: Mapping[str, str], option: Sequence[str]) -> tuple[str, ...]:
    if option:
        return split_ids(list(option), view.workers, view.local_index)
    visible = _id_list(env.get("CUDA_VISIBLE_DEVICES"))
    if visible and env.get("SLURM_GPUS_PER_TASK"):
        return tuple(visible)
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        if not visible:
            visible = _id_list(env.get(name))
    return split_ids(visible, view.workers, view.local_index)


def _memory(view: NodeView, env: Mapping[str, str], option: int | None, cores: int,
            machine: Machine) -> int:
    workers = max(1, view.workers)
    if option:
        return option // workers
    if env.get("SLURM_MEM_PER_NODE"):
        return int(env["SLURM_MEM_PER_NODE"]) * _MB // workers
    if env.get("SLURM_MEM_PER_CPU"):
        return int(env["SLURM_MEM_PER_CPU"]) * _MB * cores
    return machine.memory // workers


def share(view: NodeView, env: Mapping[str, str], settings: Settings, machine: Machine,
          gpus: Sequence[str] = (), memory: int | None = None) -> tuple[int, tuple[str, ...], int]:
    """``(cores, gpu ids, memory bytes)`` of the worker described by ``view``."""
    cores = _cores(view, env, settings, machine)
    return cores, _gpus(view, env, gpus), _memory(view, env, memory, cores, machine)


def this_machine() -> Machine:
    import psutil

    return Machine(os.cpu_count() or 1, psutil.virtual_memory().total)


def node_view(world: MPI.Intracomm) -> NodeView:
    """This rank's :class:`NodeView`. Collective over ``world``: every rank calls it."""
    from mpi4py import MPI

    local = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        ranks = local.allgather(world.rank)
    finally:
        local.Free()
    workers = [r for r in ranks if r != 0]
    index = workers.index(world.rank) if world.rank in workers else -1
    return NodeView(MPI.Get_processor_name(), len(workers), index)


def discover_slot(view: NodeView, index: int, settings: Settings, gpus: Sequence[str] = (),
                  memory: int | None = None, env: Mapping[str, str] | None = None) -> Slot:
    """The slot of the worker with slot ``index`` standing where ``view`` says."""
    cores, gpu_ids, mem = share(view, os.environ if env is None else env, settings,
                                this_machine(), gpus, memory)
    return Slot(index, view.node, cores, gpu_ids, mem)
