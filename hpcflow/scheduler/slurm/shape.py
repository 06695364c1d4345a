"""What one allocation looks like, and the worker slots the engine finds in it.

:func:`shape_for` gives the allocation :mod:`.sizing` considers on a given number of
nodes (the rules are in :mod:`.sizing`'s docstring); :func:`allocation_slots` turns an
allocation into the engine's worker slots through the MPI engine's own share rules
(:func:`hpcflow.engine.mpi.discover.share`, fed the ``SLURM_*`` values each rank would
get), so that the simulation sees what a real run would; :func:`memory_request` and
:func:`gpu_request` write its memory and GPUs in the site's dialect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcflow.engine.mpi.discover import Machine, NodeView, share
from hpcflow.engine.mpi.settings import Settings
from hpcflow.plan.analyse import Analysis
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Slot
from hpcflow.scheduler.slurm.profile import Partition

MB = 2**20


@dataclass(frozen=True)
class Overrides:
    """What the user fixed on the command line (None: let sizing choose)."""

    partition: str | None = None
    nodes: int | None = None
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    memory: int | None = None  # bytes per node
    time: float | None = None  # seconds requested
    no_time: bool = False  # --time none: leave the limit to the partition's default
    deadline: float | None = None  # seconds of run time
    engine: str | None = None


@dataclass(frozen=True)
class Shape:
    """One allocation: ``nodes`` x ``ntasks_per_node`` ranks of ``cpus_per_task`` cores,
    GPUs and memory (bytes, whole megabytes) per node."""

    nodes: int
    ntasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    memory_per_node: int

    @property
    def workers(self) -> int:
        return self.nodes * self.ntasks_per_node - 1


@dataclass(frozen=True)
class Need:
    """What the plan asks of ranks of ``cpus_per_task`` cores."""

    useful_slots: int  # ranks the plan can use at once (its ASAP peak)
    max_span: int  # most ranks one task holds
    slot_memory: int  # bytes per rank so that memory never makes a task hold more ranks
    peak_gpus: int


def shape_for(nodes: int, part: Partition, plan: Plan, analysis: Analysis, over: Overrides) -> Shape:
    """The allocation on ``nodes`` nodes (the rules are in :mod:`.sizing`'s docstring)."""
    gpu_plan = analysis.demand.peak_gpus > 0
    if gpu_plan and part.gpus_per_node and not (over.cpus_per_task or over.ntasks_per_node):
        ntasks, cpt, gpus = _gpu_ranks(nodes, part, analysis, over)
    else:
        cpt = over.cpus_per_task or 1
        need = need_of(plan, analysis, cpt)
        full = part.cores_per_node // cpt
        if over.ntasks_per_node:
            ntasks = over.ntasks_per_node
        else:
            ntasks = min(full, max(need.useful_slots, need.max_span) + 1) if nodes == 1 else full
        if over.gpus_per_node is not None:
            gpus = over.gpus_per_node
        else:
            gpus = 0 if not gpu_plan else part.gpus_per_node if ntasks >= full else \
                min(part.gpus_per_node, need.peak_gpus)
    memory = over.memory or _memory(part, ntasks, cpt, need_of(plan, analysis, cpt).slot_memory)
    return Shape(nodes, ntasks, cpt, gpus, memory)


def _gpu_ranks(nodes: int, part: Partition, analysis: Analysis, over: Overrides
               ) -> tuple[int, int, int]:
    """``(ranks per node, cores per rank, GPUs per node)`` for a plan that uses GPUs: one
    worker rank per GPU, so that every worker of a node gets an equal GPU share (the
    engine's placement assumes the shares of one node are equal). On one node the
    coordinator rank comes on top and only the GPUs of the plan's peak are asked for,
    with cores in proportion; whole nodes give every GPU its rank (the first node's
    coordinator takes one of them)."""
    cores, node_gpus = part.cores_per_node, part.gpus_per_node
    if nodes == 1:
        gpus = over.gpus_per_node or min(node_gpus, max(1, analysis.demand.peak_gpus))
        ntasks = min(cores, gpus + 1)
        return ntasks, max(1, cores * gpus // node_gpus // ntasks), gpus
    gpus = over.gpus_per_node or node_gpus
    ntasks = min(cores, max(1, gpus))
    return ntasks, cores // ntasks, gpus


def _memory(part: Partition, ntasks: int, cpt: int, slot_memory: int) -> int:
    """The node's memory in proportion to the cores taken, or what the tasks need per rank
    if that is more; never more than the node has; whole megabytes."""
    share_of_node = part.memory * ntasks * cpt // part.cores_per_node
    memory = min(part.memory, max(share_of_node, slot_memory * ntasks))
    return max(MB, memory // MB * MB) if memory >= part.memory else math.ceil(memory / MB) * MB


def need_of(plan: Plan, analysis: Analysis, cpt: int) -> Need:
    span = [math.ceil(int(plan.cores[g.start]) / cpt) for g in plan.groups if g.size]
    ranks = [int(plan.ranks[g.start]) for g in plan.groups if g.size]
    memory = [math.ceil(int(plan.memory[g.start]) / s) for g, s in
              zip((g for g in plan.groups if g.size), span, strict=True)]
    demand = analysis.demand
    return Need(useful_slots=max(1, math.ceil(demand.peak_cores / cpt)),
                 max_span=max((s * r for s, r in zip(span, ranks, strict=True)), default=1),
                 slot_memory=max(memory, default=0), peak_gpus=demand.peak_gpus)


def memory_request(shape: Shape, style: str) -> tuple[str, int]:
    """``(directive, megabytes)`` for the shape's memory in the site's style; mem-per-gpu
    without GPUs falls back to ``mem``."""
    per_node = shape.memory_per_node // MB
    if style == "mem-per-cpu":
        return "mem-per-cpu", math.ceil(per_node / (shape.ntasks_per_node * shape.cpus_per_task))
    if style == "mem-per-gpu" and shape.gpus_per_node:
        return "mem-per-gpu", math.ceil(per_node / shape.gpus_per_node)
    return "mem", per_node


def gpu_request(shape: Shape, style: str) -> tuple[str, str] | None:
    """``(directive, value)`` for the shape's GPUs in the site's style, or None."""
    if not shape.gpus_per_node:
        return None
    if style == "gpus":
        return "gpus", str(shape.gpus_per_node * shape.nodes)
    if style == "gres":
        return "gres", f"gpu:{shape.gpus_per_node}"
    return "gpus-per-node", str(shape.gpus_per_node)


def allocation_slots(shape: Shape, part: Partition, memory_style: str) -> list[Slot]:
    """The worker slots the MPI engine finds in ``shape``: the environment Slurm gives
    each rank, run through the engine's own share rules. Rank 0 (the coordinator) is on
    the first node and takes no share."""
    name, mb = memory_request(shape, memory_style)
    env = {"SLURM_CPUS_PER_TASK": str(shape.cpus_per_task),
           "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in range(shape.gpus_per_node))}
    if name == "mem":
        env["SLURM_MEM_PER_NODE"] = str(mb)
    elif name == "mem-per-cpu":
        env["SLURM_MEM_PER_CPU"] = str(mb)
    machine = Machine(part.cores_per_node, shape.memory_per_node)
    slots: list[Slot] = []
    for node in range(shape.nodes):
        workers = shape.ntasks_per_node - (1 if node == 0 else 0)
        for local in range(workers):
            cores, gpus, memory = share(NodeView(f"node{node}", workers, local), env, Settings(),
                                        machine)
            slots.append(Slot(len(slots), f"node{node}", cores, gpus, memory))
    return slots
