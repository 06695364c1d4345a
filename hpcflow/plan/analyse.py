"""What a plan needs before it runs: levels, priorities, the critical path and its demand.

All of it follows from two passes over the graph in id order, which :func:`flatten`
makes a topological order (every edge ``src < dst``, a group's members independent).

Instead of visiting tasks one at a time, the passes visit *waves*: maximal runs of
consecutive groups with no edge inside the run. The members of a wave depend only on
earlier waves, so a wave is a handful of numpy calls whatever its size: gather the
values of its incoming edges (the contiguous slice ``pred[pred_ptr[a]:pred_ptr[b]]``)
and reduce them per task with ``np.maximum.reduceat``. A swept layer of a thousand
tasks is one wave, so a million-task sweep plan takes a thousand small numpy steps,
not a million Python steps. Plans of tiny waves (a long chain of single tasks) fall
back to a plain loop, which is cheaper there than numpy's per-call overhead.

- forward: ``level`` (edges from a source) and the ASAP ``earliest_start``
  (the max finish of the predecessors, everything starting as early as it can);
- backward, over ``succ``: ``priority``, the bottom level in seconds (own time plus
  the longest chain of times below it). The engine dispatches the ready task of
  highest priority first ("longest remaining path first"), and so does the simulator;
- the critical path: from the source of highest priority, always to the successor of
  highest priority (lowest id on ties);
- :class:`Demand`: a sweep line over the ASAP start and finish events gives the peak
  concurrent cores, GPUs and memory if nothing limited them, the size to ask Slurm for
  when it should never be the bottleneck.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from hpcflow.errors import CycleError
from hpcflow.plan.graph import find_cycle
from hpcflow.plan.plan import Plan

_MIN_WAVE = 8
"""Below this mean wave size the plain loop beats numpy's per-call overhead."""


@dataclass(frozen=True)
class Demand:
    """What the plan asks for. Peaks are for the ASAP schedule (unlimited workers): each
    task counts ``cores*ranks``, ``gpus*ranks`` and ``memory*ranks`` (bytes) while it runs;
    ``max_*`` are the largest single task's needs, per rank except ``max_ranks``."""

    tasks: int
    work_seconds: float
    core_hours: float
    gpu_hours: float
    peak_cores: int
    peak_gpus: int
    peak_memory: int
    widest_level: int
    max_cores: int
    max_gpus: int
    max_memory: int
    max_ranks: int


@dataclass(eq=False)
class Analysis:
    """Per-task arrays (indexed by task id) and whole-plan figures; see the module doc."""

    level: np.ndarray  # int32[n]
    priority: np.ndarray  # float64[n], seconds
    earliest_start: np.ndarray  # float64[n], seconds, ASAP
    critical_path: np.ndarray  # int64[k], ids from a source to a sink
    critical_time: float  # seconds
    demand: Demand

    @property
    def n_levels(self) -> int:
        return int(self.level.max()) + 1 if self.level.size else 0


def check_order(plan: Plan) -> None:
    """Check what :func:`analyse` relies on: every edge goes from a lower id to a higher
    one, and no edge joins two members of one group.

    Raises :class:`CycleError` (with the cycle's task names) when the edges have a
    cycle, ``ValueError`` when they are acyclic but not in this order (build such a
    plan with :func:`hpcflow.plan.graph.plan_from_edges`, which relabels)."""
    deg = np.diff(plan.pred_ptr)
    dst = np.repeat(np.arange(plan.n, dtype=np.int32), deg)
    backward = plan.pred >= dst
    if backward.any():
        cycle = find_cycle(plan.n, plan.pred_ptr, plan.pred)
        if cycle:
            raise CycleError([plan.name(i) for i in cycle])
        k = int(np.argmax(backward))
        raise ValueError(f"edge {plan.name(int(plan.pred[k]))} -> {plan.name(int(dst[k]))} goes "
                         "from a higher id to a lower one: relabel with plan_from_edges")
    inner = plan.group_of[plan.pred] == plan.group_of[dst]
    if inner.any():
        k = int(np.argmax(inner))
        raise ValueError(f"edge {plan.name(int(plan.pred[k]))} -> {plan.name(int(dst[k]))} "
                         "joins two members of one group")


def analyse(plan: Plan) -> Analysis:
    """Levels, priorities, critical path and demand of a plan in topological id order
    (as :func:`flatten` and :func:`plan_from_edges` make; :func:`check_order` checks it)."""
    waves = _waves(plan)
    time = plan.time.astype(np.float64, copy=False)
    if plan.n and plan.n < _MIN_WAVE * (len(waves) - 1):
        level, start = _forward_loop(plan, time)
        priority = _backward_loop(plan, time)
    else:
        level, start = _forward(plan, time, waves)
        priority = _backward(plan, time, waves)
    path = _critical_path(plan, priority)
    critical_time = float(priority[path[0]]) if path.size else 0.0
    return Analysis(level, priority, start, path, critical_time, _demand(plan, level, start, time))


def _waves(plan: Plan) -> list[int]:
    """Boundaries ``[0, b1, ..., n]`` of maximal runs of groups with no edge inside a run."""
    n = plan.n
    if n == 0:
        return [0]
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(plan.group_of)) + 1))
    maxpred = _segment_max(plan.pred, plan.pred_ptr, -1)
    group_max = np.maximum.reduceat(maxpred, bounds).tolist()
    waves, wave_start = [0], 0
    for start, highest in zip(bounds[1:].tolist(), group_max[1:], strict=True):
        if highest >= wave_start:
            waves.append(start)
            wave_start = start
    waves.append(n)
    return waves


def _segment_max(values: np.ndarray, ptr: np.ndarray, empty: float) -> np.ndarray:
    """``max(values[ptr[i]:ptr[i+1]])`` for each i, ``empty`` where the segment is empty."""
    count = ptr.size - 1
    starts = ptr[:-1]
    if values.size == 0:
        return np.full(count, empty, dtype=values.dtype)
    full = ptr[1:] > starts
    if full.all():
        return np.maximum.reduceat(values, starts)
    out = np.full(count, empty, dtype=values.dtype)
    out[full] = np.maximum.reduceat(values, starts[full])
    return out


def _forward(plan: Plan, time: np.ndarray, waves: list[int]) -> tuple[np.ndarray, np.ndarray]:
    n, ptr, pred = plan.n, plan.pred_ptr, plan.pred
    level = np.zeros(n, np.int32)
    start = np.zeros(n, np.float64)
    finish = np.empty(n, np.float64)
    for a, b in pairwise(waves):
        e0, e1 = int(ptr[a]), int(ptr[b])
        if e1 > e0:
            src = pred[e0:e1]
            seg = ptr[a : b + 1] - e0
            level[a:b] = _segment_max(level[src], seg, -1) + 1
            start[a:b] = _segment_max(finish[src], seg, 0.0)
        np.add(start[a:b], time[a:b], out=finish[a:b])
    return level, start


def _backward(plan: Plan, time: np.ndarray, waves: list[int]) -> np.ndarray:
    ptr, succ = plan.succ_ptr, plan.succ
    priority = time.copy()
    for a, b in reversed(list(pairwise(waves))):
        e0, e1 = int(ptr[a]), int(ptr[b])
        if e1 > e0:
            priority[a:b] += _segment_max(priority[succ[e0:e1]], ptr[a : b + 1] - e0, 0.0)
    return priority


def _forward_loop(plan: Plan, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ptr, pred, dur = plan.pred_ptr.tolist(), plan.pred.tolist(), time.tolist()
    level = [0] * plan.n
    start = [0.0] * plan.n
    finish = [0.0] * plan.n
    for i in range(plan.n):
        ups = pred[ptr[i] : ptr[i + 1]]
        if ups:
            level[i] = max([level[p] for p in ups]) + 1
            start[i] = max([finish[p] for p in ups])
        finish[i] = start[i] + dur[i]
    return np.asarray(level, np.int32), np.asarray(start, np.float64)


def _backward_loop(plan: Plan, time: np.ndarray) -> np.ndarray:
    ptr, succ = plan.succ_ptr.tolist(), plan.succ.tolist()
    priority = time.tolist()
    for i in range(plan.n - 1, -1, -1):
        downs = succ[ptr[i] : ptr[i + 1]]
        if downs:
            priority[i] += max([priority[s] for s in downs])
    return np.asarray(priority, np.float64)


def _critical_path(plan: Plan, priority: np.ndarray) -> np.ndarray:
    """From the highest-priority task (a source: its predecessors would rank at least as
    high with a lower id), step to the successor of highest priority until a sink."""
    if plan.n == 0:
        return np.empty(0, np.int64)
    ptr, succ = plan.succ_ptr, plan.succ
    path = [int(np.argmax(priority))]
    while True:
        i = path[-1]
        downs = succ[ptr[i] : ptr[i + 1]]
        if downs.size == 0:
            return np.asarray(path, np.int64)
        path.append(int(downs[np.argmax(priority[downs])]))


def _demand(plan: Plan, level: np.ndarray, start: np.ndarray, time: np.ndarray) -> Demand:
    n = plan.n
    ranks = plan.ranks.astype(np.int64)
    cores, gpus = plan.cores * ranks, plan.gpus * ranks
    memory = plan.memory * ranks
    peaks = _peaks(start, start + time, (cores, gpus, memory))
    return Demand(
        tasks=n,
        work_seconds=float(time.sum()),
        core_hours=float(np.dot(time, cores)) / 3600,
        gpu_hours=float(np.dot(time, gpus)) / 3600,
        peak_cores=peaks[0], peak_gpus=peaks[1], peak_memory=peaks[2],
        widest_level=int(np.bincount(level).max()) if n else 0,
        max_cores=_max(plan.cores), max_gpus=_max(plan.gpus),
        max_memory=_max(plan.memory), max_ranks=_max(plan.ranks),
    )


def asap_peak(plan: Plan, analysis: Analysis, weight: np.ndarray) -> int:
    """The peak of ``weight`` (one value per task) summed over the tasks running at once
    in the ASAP schedule (unlimited workers), as :class:`Demand`'s peaks are taken."""
    start = analysis.earliest_start
    return _peaks(start, start + plan.time, (weight,))[0]


def _peaks(start: np.ndarray, finish: np.ndarray, weights: tuple[np.ndarray, ...]) -> list[int]:
    """Peak of each weight summed over running tasks. A stable sort of finishes-then-
    starts puts a finish before a start at the same instant: the freed cores are reused,
    as the engine would. A task of zero time is never counted as running."""
    if start.size == 0:
        return [0] * len(weights)
    order = np.argsort(np.concatenate((finish, start)), kind="stable")
    peaks = []
    for weight in weights:
        if not weight.any():
            peaks.append(0)
            continue
        w = weight.astype(np.int64, copy=False)
        steps = np.concatenate((-w, w))[order]
        peaks.append(max(int(np.cumsum(steps, out=steps).max()), 0))
    return peaks


def _max(values: np.ndarray) -> int:
    return int(values.max()) if values.size else 0
