"""What one allocation looks like, and the worker slots the engine finds in it.

:func:`axis_for` gives the allocations :mod:`.sizing` searches on a partition, as one
:class:`Axis` (the rules are in :mod:`.sizing`'s docstring); :func:`charged_fraction`,
:func:`cost` and :func:`charge` say what the site charges for one; :func:`allocation_slots` turns an
allocation into the engine's worker slots through the MPI engine's own share rules
(:func:`hpcflow.engine.mpi.discover.share`, fed the ``SLURM_*`` values each rank would
get), so that the simulation sees what a real run would; :func:`memory_request` and
:func:`gpu_request` write its memory and GPUs in the site's dialect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hpcflow.engine.mpi.discover import Machine, NodeView, share
from hpcflow.engine.mpi.settings import Settings
from hpcflow.plan.analyse import Analysis, asap_peak
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
    ntasks: int | None = None  # ranks in all, coordinator included
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
    """What the plan asks of ranks of ``cpus_per_task`` cores on a partition, each with
    its share of a node's memory (in proportion to its cores)."""

    useful_slots: int  # ranks the plan can use at once (its ASAP peak: cores or memory)
    max_span: int  # most ranks one task holds (cores or memory)
    task_memory: int  # the most memory one task needs on its node (memory x ranks)


@dataclass(frozen=True)
class Axis:
    """The shapes one partition offers along one dimension: ``make(k)`` for ``lo <= k <=
    hi``, more of the partition as ``k`` grows. ``what`` names ``k``: ``workers`` (shared
    nodes: ranks spread evenly over the fewest nodes that hold them), ``nodes`` (whole
    nodes, or ``--ntasks-per-node`` given) or ``GPUs`` (one rank per GPU)."""

    partition: Partition
    what: str
    lo: int
    hi: int
    make: Callable[[int], Shape]
    spread: Callable[[int, int], Shape] | None = None
    """``spread(k, nodes)``: the same ``k`` over more nodes than ``make`` takes (tasks of
    many ranks, or much memory, may need room on each node); None where nodes are fixed."""


def axis_for(part: Partition, plan: Plan, analysis: Analysis, over: Overrides, *,
             one_node: bool = False, equal_shares: bool = False) -> Axis:
    """The axis the sizing searches on ``part`` (the rules are in :mod:`.sizing`'s
    docstring); ``one_node``: the engine cannot span nodes (the local engine);
    ``equal_shares``: every worker of a node must get the same share (Dask and Ray
    workers are started alike per node), so a GPU plan gets one rank per GPU."""
    nodes = 1 if one_node else over.nodes
    if analysis.demand.peak_gpus and part.gpus_per_node and not (
            over.cpus_per_task or over.ntasks_per_node or over.ntasks):
        return _gpu_axis(part, plan, analysis, over, nodes, equal_shares)
    cpt = over.cpus_per_task or 1
    need = need_of(plan, analysis, part, cpt)
    per_node = part.cores_per_node // cpt
    gpus = over.gpus_per_node or 0

    def build(n: int, ntasks: int) -> Shape:
        return Shape(n, ntasks, cpt, gpus, over.memory or _memory(part, ntasks, cpt, need.task_memory))

    if over.ntasks_per_node or (part.whole_nodes and not over.ntasks):
        ntasks = over.ntasks_per_node or per_node
        if nodes:
            return Axis(part, "nodes", nodes, nodes, lambda n: build(n, ntasks))
        useful = max(need.useful_slots, need.max_span) + 1
        return Axis(part, "nodes", 1, max(1, min(part.nodes, math.ceil(useful / ntasks))),
                    lambda n: build(n, ntasks))

    def over_nodes(workers: int, n: int) -> Shape:
        return build(n, min(per_node, max(math.ceil((workers + 1) / n), need.max_span + (n == 1))))

    def fewest(workers: int) -> Shape:
        return over_nodes(workers, nodes or math.ceil((workers + 1) / per_node))

    if over.ntasks:  # rounded up to the same ranks on every node
        return Axis(part, "workers", over.ntasks - 1, over.ntasks - 1, fewest)
    capacity = (nodes or part.nodes) * per_node - 1
    lo = min(capacity, max(1, need.max_span, (nodes or 1) - 1))
    hi = max(lo, min(capacity, max(need.useful_slots, need.max_span)))
    wide = over_nodes if need.max_span > 1 and not nodes else None  # equal one-rank tasks: no gain
    return Axis(part, "workers", lo, hi, fewest, wide)


def _gpu_axis(part: Partition, plan: Plan, analysis: Analysis, over: Overrides,
              nodes: int | None, equal_shares: bool) -> Axis:
    """GPUs in all, over the fewest nodes that hold them, each node's cores and memory in
    proportion to its GPUs as one-core ranks (what the site charges for anyway: a GPU
    job pays for the larger of its GPU and core shares); on whole nodes the axis counts
    nodes, each with all its GPUs and cores. The engine gives the node's GPU ids to its
    first worker ranks, one each, and a GPU task holds its GPU's rank and enough others
    for its cores and memory."""
    node_gpus, cores = part.gpus_per_node, part.cores_per_node
    need = need_of(plan, analysis, part, 1)

    def build(n: int, gpus: int) -> Shape:
        gpus = max(1, min(node_gpus, gpus))
        if equal_shares:
            ntasks, cpt = _rank_per_gpu(n, part, gpus)
        else:
            ntasks = min(cores, max(cores * gpus // node_gpus, gpus + 1, need.max_span + (n == 1)))
            cpt = 1
        return Shape(n, ntasks, cpt, gpus, over.memory or _memory(part, ntasks, cpt, need.task_memory))

    if part.whole_nodes or over.gpus_per_node:
        per = over.gpus_per_node or node_gpus
        if nodes:
            return Axis(part, "nodes", nodes, nodes, lambda n: build(n, per))
        hi = math.ceil(max(analysis.demand.peak_gpus / per,
                           (need.useful_slots + 1) / max(1, cores * per // node_gpus)))
        return Axis(part, "nodes", 1, max(1, min(part.nodes, hi)), lambda n: build(n, per))

    def over_nodes(total: int, n: int) -> Shape:
        return build(n, math.ceil(total / n))

    def fewest(total: int) -> Shape:
        return over_nodes(total, nodes or math.ceil(total / node_gpus))

    most = (nodes or part.nodes) * node_gpus
    per_gpu = cores / node_gpus
    useful = max(analysis.demand.peak_gpus, math.ceil((need.useful_slots + 1) / per_gpu))
    lo = min(most, max(1, analysis.demand.max_gpus * analysis.demand.max_ranks, nodes or 1))
    hi = max(lo, min(most, useful))
    return Axis(part, "GPUs", lo, hi, fewest, None if nodes else over_nodes)


def _rank_per_gpu(nodes: int, part: Partition, gpus: int) -> tuple[int, int]:
    """``(ranks per node, cores per rank)`` with one worker rank per GPU and the cores in
    proportion; on one node the coordinator's rank comes on top, on several it takes one
    of the first node's."""
    cores, node_gpus = part.cores_per_node, part.gpus_per_node
    ntasks = min(cores, gpus + 1) if nodes == 1 else min(cores, gpus)
    return ntasks, max(1, cores * gpus // node_gpus // ntasks)


def _memory(part: Partition, ntasks: int, cpt: int, task_memory: int) -> int:
    """The node's memory in proportion to the cores taken (a task needing more than its
    rank's share holds more ranks), at least what the biggest task needs on its node;
    whole megabytes."""
    share_of_node = part.memory * ntasks * cpt // part.cores_per_node
    memory = min(part.memory, max(share_of_node, task_memory))
    return max(MB, memory // MB * MB) if memory >= part.memory else math.ceil(memory / MB) * MB


def with_ranks(shape: Shape, part: Partition, plan: Plan, nodes: int,
               ntasks: int) -> Shape:
    """``shape`` on ``nodes`` nodes of ``ntasks`` ranks, memory again in proportion."""
    return Shape(nodes, ntasks, shape.cpus_per_task, shape.gpus_per_node,
                 _memory(part, ntasks, shape.cpus_per_task, _task_memory(plan)))


def charged_fraction(shape: Shape, part: Partition) -> float:
    """The part of each node the site charges for: all of it on whole nodes, else the
    largest of the cores, GPUs and memory taken (as Slurm's billing ``MAX`` counts)."""
    if part.whole_nodes:
        return 1.0
    taken = shape.ntasks_per_node * shape.cpus_per_task / part.cores_per_node
    if part.gpus_per_node:
        taken = max(taken, shape.gpus_per_node / part.gpus_per_node)
    return min(1.0, max(taken, shape.memory_per_node / part.memory))


def cost_unit(shape: Shape, part: Partition) -> tuple[int, str]:
    """``(per node, name)``: GPU-hours when GPUs are asked for, node-hours on whole
    nodes, else core-hours."""
    if shape.gpus_per_node and part.gpus_per_node:
        return part.gpus_per_node, "GPU-h"
    if part.whole_nodes:
        return 1, "node-h"
    return part.cores_per_node, "core-h"


def cost(shape: Shape, part: Partition, seconds: float) -> float:
    """What the site charges for ``shape`` held ``seconds``, in :func:`cost_unit`."""
    return shape.nodes * charged_fraction(shape, part) * cost_unit(shape, part)[0] * seconds / 3600


def charge(shape: Shape, part: Partition, seconds: float) -> float:
    """:func:`cost` in a unit common to every partition of one kind: core-hours (whole
    nodes: all their cores), GPU-hours when GPUs are asked for."""
    per_node = part.gpus_per_node if shape.gpus_per_node and part.gpus_per_node else \
        part.cores_per_node
    return shape.nodes * charged_fraction(shape, part) * per_node * seconds / 3600


def need_of(plan: Plan, analysis: Analysis, part: Partition, cpt: int) -> Need:
    """What the plan needs of ranks of ``cpt`` cores, and memory in proportion, on ``part``."""
    share = part.memory * cpt / part.cores_per_node
    spans = np.maximum(-(-plan.cores.astype(np.int64) // cpt),
                       np.ceil(plan.memory / share).astype(np.int64)) * plan.ranks
    return Need(useful_slots=max(1, asap_peak(plan, analysis, spans)),
                max_span=int(spans.max()) if plan.n else 1, task_memory=_task_memory(plan))


def _task_memory(plan: Plan) -> int:
    """The most memory one task needs on its node (memory x ranks)."""
    return int((plan.memory.astype(np.int64) * plan.ranks).max()) if plan.n else 0


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
