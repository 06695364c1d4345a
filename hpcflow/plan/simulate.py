"""Predict a run: the engine's list schedule, replayed in simulated time.

The engine dispatches by a few fixed rules, and this module follows them exactly, so
that its makespan is what a run of tasks that take their ``time`` estimates would
measure, and so that candidate allocations (node counts for a Slurm request) can be
compared by simulating each:

1. A task becomes ready when its last predecessor finishes (in-degree counters).
2. Ready tasks are popped from the engine's own :class:`~hpcflow.plan.ready.ReadyQueue`
   keyed by ``-priority`` (:attr:`Analysis.priority`, the bottom level: longest
   remaining path first; first come first served among equals).
3. :class:`~hpcflow.plan.policy.Placer` (the engine's own object) decides whether a
   task fits now and on which slots. A task that does not fit is set aside and the next
   one is tried; the round ends when the placer is full (checked before a pop: a
   round on a full placer pops nothing) or :data:`MAX_SET_ASIDE` tasks are set aside,
   and those go back ahead of their equals (``engine/core.py``'s ``_dispatch``).
4. Completions that happen at the same instant are all released before the next round.
5. With ``depth > 1`` a one-slot task may be queued behind the task running on its
   slot; it starts when that slot's earlier tasks finish.

Each task is pushed and popped O(1) times plus at most :data:`MAX_SET_ASIDE` set-asides
per round, and each edge is counted down once: O((n + E) log p) for p distinct
priorities. The state is kept in
Python lists (not numpy scalars), which is what makes the constant small.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpcflow.errors import ResourceError
from hpcflow.model.resources import format_memory
from hpcflow.plan.analyse import Analysis
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Placement, Placer, Slot
from hpcflow.plan.ready import ReadyQueue

MAX_SET_ASIDE = 64
"""A dispatch round ends after setting aside this many tasks that do not fit (as the
engine's does: ``engine/core.py``), so a queue of big waiting tasks costs O(1) per round."""


@dataclass(eq=False)
class Schedule:
    """When and where each task ran in the simulation (seconds from the start)."""

    start: np.ndarray  # float64[n]
    finish: np.ndarray  # float64[n]
    slot: np.ndarray  # int32[n]: the leader slot of the task's first rank
    makespan: float


def simulate(plan: Plan, analysis: Analysis, slots: Sequence[Slot], depth: int = 1) -> Schedule:
    """The engine's schedule of ``plan`` on ``slots`` (see the module doc for the rules).

    Raises :class:`ResourceError` if some task fits on no node of ``slots``."""
    return _Simulation(plan, analysis, slots, depth).run()


def lower_bound(plan: Plan, analysis: Analysis, capacity: int) -> float:
    """No schedule on ``capacity`` cores beats this: the critical path, or the core-seconds
    of all the work spread perfectly over the cores, whichever is longer."""
    if capacity < 1:
        raise ValueError("capacity must be at least one core")
    core_seconds = float(np.dot(plan.time, plan.cores.astype(np.int64) * plan.ranks))
    return max(analysis.critical_time, core_seconds / capacity)


class _Simulation:
    """The run state, in plain containers: the ready heap, the event heap of running
    tasks, in-degree counters, and the Placer's own bookkeeping of slots."""

    __slots__ = ("events", "finish", "indeg", "n", "need", "need_of", "place", "placements",
                 "placer", "plan", "priority", "ready", "slot", "slot_free", "start", "succ",
                 "succ_ptr", "time")

    def __init__(self, plan: Plan, analysis: Analysis, slots: Sequence[Slot], depth: int) -> None:
        self.plan, self.n = plan, plan.n
        self.placer = Placer(slots, depth)
        self.need, need_of = _shapes(plan)  # distinct (cores, gpus, memory, ranks)
        self.need_of = need_of.tolist()
        self._check_fits(need_of)
        self.place = [functools.partial(self.placer.place, *shape) for shape in self.need]
        self.priority = (-analysis.priority).tolist()
        self.time = plan.time.tolist()
        self.succ_ptr, self.succ = plan.succ_ptr.tolist(), plan.succ.tolist()
        self.indeg = np.diff(plan.pred_ptr).tolist()
        self.start = [0.0] * self.n
        self.finish = [0.0] * self.n
        self.slot = [0] * self.n
        self.slot_free = [0.0] * len(slots)
        self.placements: list[Placement | None] = [None] * self.n
        self.events: list[tuple[float, int]] = []
        self.ready = ReadyQueue((self.priority[i], i)
                                for i in np.flatnonzero(np.diff(plan.pred_ptr) == 0).tolist())

    def _check_fits(self, need_of: np.ndarray) -> None:
        for k, (cores, gpus, memory, ranks) in enumerate(self.need):
            if not self.placer.max_span(cores, gpus, memory, ranks):
                first = int(np.argmax(need_of == k))
                raise ResourceError(self.plan.name(first), (
                    f"needs {ranks} rank(s) of {cores} core(s), {gpus} GPU(s), "
                    f"{format_memory(memory)} memory on one node; no node of the "
                    "simulated slots offers that"))

    def run(self) -> Schedule:
        events, pop, complete, dispatch = self.events, heapq.heappop, self._complete, self._dispatch
        dispatch(0.0)
        done = 0
        while events:
            now = events[0][0]
            while events and events[0][0] == now:  # release all, then dispatch once
                complete(pop(events)[1])
                done += 1
            dispatch(now)
        if done != self.n:  # unreachable while _check_fits holds; kept as a guard
            raise RuntimeError(f"simulation stalled after {done} of {self.n} tasks")
        finish = np.asarray(self.finish, np.float64)
        return Schedule(np.asarray(self.start, np.float64), finish,
                        np.asarray(self.slot, np.int32), float(finish.max()) if self.n else 0.0)

    def _complete(self, i: int) -> None:
        """Task ``i`` finished: free its slots, count down its successors."""
        self.placer.release(self.placements[i])  # type: ignore[arg-type]
        self.placements[i] = None
        indeg, priority, push = self.indeg, self.priority, self.ready.push
        for s in self.succ[self.succ_ptr[i] : self.succ_ptr[i + 1]]:
            indeg[s] -= 1
            if not indeg[s]:
                push(priority[s], s)

    def _dispatch(self, now: float) -> None:
        """One round of the engine's dispatch (rule 3 of the module doc); a task placed
        starts now, or on a busy slot (``depth > 1``) when that slot's queue drains."""
        ready, placer, slot_free, dur = self.ready, self.placer, self.slot_free, self.time
        need_of, place = self.need_of, self.place
        push, events = heapq.heappush, self.events
        aside: list[tuple[float, int]] = []
        failed: set[int] = set()  # needs that found no room this round: no release comes
        while ready and not placer.full:
            item = ready.pop()
            i = item[1]
            k = need_of[i]
            placement = None if k in failed else place[k]()
            if placement is None:
                failed.add(k)
                aside.append(item)
                if len(aside) >= MAX_SET_ASIDE:
                    break
                continue
            leader = placement.leaders[0]
            begin = now if placement.exclusive or slot_free[leader] < now else slot_free[leader]
            end = begin + dur[i]
            if not placement.exclusive:
                slot_free[leader] = end
            self.start[i], self.finish[i], self.slot[i] = begin, end, leader
            self.placements[i] = placement
            push(events, (end, i))
        if aside:
            ready.unpop(aside)


def _shapes(plan: Plan) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """Distinct (cores, gpus, memory, ranks) of the tasks, and each task's index into them."""
    table = np.stack([plan.cores, plan.gpus, plan.memory, plan.ranks], axis=1).astype(np.int64)
    if plan.n == 0:
        return [], np.zeros(0, np.int64)
    if (table == table[0]).all():
        return [tuple(table[0].tolist())], np.zeros(plan.n, np.int64)  # type: ignore[list-item]
    rows, inverse = np.unique(table, axis=0, return_inverse=True)
    return [tuple(r) for r in rows.tolist()], inverse.ravel()
