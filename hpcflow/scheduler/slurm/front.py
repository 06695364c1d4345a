"""Search one :class:`~.shape.Axis` of allocations for the cheapest good one.

Along an axis (more workers, more whole nodes or more GPUs as ``k`` grows) the
predicted makespan falls, quickly at first and then not at all, while the cost, about
``k x makespan``, rises once the extra ranks stand idle. The knee the sizing wants is
the smallest ``k`` whose candidate is good enough (within the tolerance of the fastest,
or within a deadline), so the search:

1. simulates a geometric grid of ``k`` (doubling from ``lo`` to ``hi``, both included):
   the front that ``plan --slurm`` prints, and where the curve bends;
2. bisects between the last grid point that is not good enough and the first that is,
   down to one step of ``k``: the curve is searched finely only where it bends, in
   O(log k) simulations;
3. leaves a point unsimulated where its lower bound (critical path, or the work spread
   over its cores: :func:`hpcflow.plan.simulate.lower_bound`) already rules it out.

The makespan is not strictly monotone in ``k`` (list schedules have anomalies, and task
granularity makes steps), so the caller picks the cheapest good candidate among all
those simulated, not only the bisection's last one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hpcflow.errors import ResourceError
from hpcflow.plan.analyse import Analysis
from hpcflow.plan.plan import Plan
from hpcflow.plan.simulate import lower_bound, simulate
from hpcflow.scheduler.slurm.profile import Partition, Profile
from hpcflow.scheduler.slurm.shape import (
    Axis,
    Overrides,
    Shape,
    allocation_slots,
    axis_for,
    charge,
    cost,
    cost_unit,
    with_ranks,
)
from hpcflow.scheduler.slurm.timing import requested_time

Good = Callable[[int], bool]


def grid(axis: Axis) -> list[int]:
    """``lo``, then doubling steps, then ``hi``."""
    ks, k = [axis.lo], axis.lo
    while k < axis.hi:
        k = min(axis.hi, max(k + 1, k * 2))
        ks.append(k)
    return ks


def threshold(ks: list[int], good: Good) -> int | None:
    """The smallest ``k`` that is good, assuming goodness mostly grows with ``k``: the
    first good point of the sorted ``ks`` already judged, refined by bisection against
    the point below it. None when no point of ``ks`` is good."""
    judged = [(k, good(k)) for k in ks]
    first = next((i for i, (_, ok) in enumerate(judged) if ok), None)
    if first is None:
        return None
    hi = judged[first][0]
    if first == 0:
        return hi
    lo = judged[first - 1][0]  # not good
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if good(mid):
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class Candidate:
    """One allocation: simulated (``makespan``), ruled out by its lower bound (``bound``)
    or not possible (``note`` says why). ``cost`` is in ``unit`` (core-h, node-h, GPU-h);
    ``charge`` compares partitions; ``efficiency`` is the work over what is charged."""

    partition: Partition
    shape: Shape
    makespan: float | None
    time: float | None
    cost: float | None
    unit: str
    fits: bool
    note: str = ""
    bound: float | None = None
    efficiency: float | None = None
    charge: float | None = None


class Search:
    """The candidates simulated on every partition's axis (:func:`grid` and
    :func:`threshold` on each), the fastest, and the goal: within the profile's tolerance
    of the fastest, or (``--deadline``) only fitting the limit."""

    def __init__(self, plan: Plan, analysis: Analysis, profile: Profile, over: Overrides,
                 parts: list[Partition], limit: float | None) -> None:
        self.plan, self.analysis, self.profile, self.over = plan, analysis, profile, over
        self.limit, self.default = limit, profile.partition().name
        self.deadline = over.deadline is not None
        engine = over.engine or profile.engine
        self.axes = [axis_for(p, plan, analysis, over, one_node=engine == "local",
                              equal_shares=engine in ("dask", "ray")) for p in parts]
        self.equal_shares = engine in ("dask", "ray")
        self.seen: dict[tuple[str, Shape], Candidate] = {}
        self.fastest: Candidate | None = None
        for axis in self.axes:
            self._top(axis)
        self.fastest = self._fastest()
        for axis in self.axes:
            threshold(grid(axis), lambda k, a=axis: self.good(self.at(a, k)))
        self.fastest = self._fastest()
        for axis in self.axes:
            if not self.equal_shares and (axis.what == "GPUs" or (
                    axis.what == "nodes" and analysis.demand.peak_gpus)):
                self._fewer_ranks(axis.partition)
        self.candidates = tuple(sorted(self.seen.values(), key=self._order))

    def at(self, axis: Axis, k: int) -> Candidate:
        return self._at_shape(axis.partition, axis.make(k))

    def _at_shape(self, part: Partition, shape: Shape) -> Candidate:
        key = (part.name, shape)
        if key not in self.seen:
            self.seen[key] = self._evaluate(part, shape)
        return self.seen[key]

    def _top(self, axis: Axis) -> None:
        """The axis's top, then the same over more nodes while that is faster (tasks of
        many ranks or much memory need room on each node, not only ranks in all)."""
        best = self.at(axis, axis.hi)
        if axis.spread is None:
            return
        nodes = best.shape.nodes
        for n in (nodes + 1, nodes + 2, nodes * 2, nodes * 4):
            if n > axis.partition.nodes or (best.makespan is None and best.note.startswith("not")):
                break
            wide = self._at_shape(axis.partition, axis.spread(axis.hi, n))
            if wide.makespan is None or (best.makespan is not None and
                                         wide.makespan >= best.makespan * (1 - 1e-9)):
                break
            best = wide

    def _fewer_ranks(self, part: Partition) -> None:
        """GPU jobs pay for the GPUs; how many one-core ranks share a node's cores then
        changes the schedule (GPU tasks hold several ranks) but not the cost: try a few
        rank counts on the cheapest good candidate's GPUs, on it and one node fewer."""
        good = [c for c in self.seen.values() if c.partition is part and self.good(c)]
        if not good:
            return
        best = min(good, key=self.rank).shape
        cores, gpus = part.cores_per_node, best.gpus_per_node
        counts = {cores, cores - 1, cores - 2, cores - 3, cores * 7 // 8, cores * 3 // 4,
                  cores // 2, gpus + 1}
        for nodes in (best.nodes, best.nodes - 1):
            for ntasks in sorted(c for c in counts if gpus < c <= cores):
                if nodes >= 1:
                    self._at_shape(part, with_ranks(best, part, self.plan, nodes, ntasks))

    def good(self, c: Candidate) -> bool:
        """Fits the limit and, without a deadline, is within the tolerance of the fastest."""
        if not c.fits:
            return False
        if self.deadline or self.fastest is None or self.fastest.makespan is None:
            return True
        return (c.makespan or 0.0) <= self.fastest.makespan * (1 + self.profile.tolerance) + 1e-9

    def rank(self, c: Candidate) -> tuple[float, bool, int, float]:
        return (round(c.charge or 0.0, 9), c.partition.name != self.default, c.shape.nodes,
                c.makespan or 0.0)

    def _fastest(self) -> Candidate | None:
        timed = [c for c in self.seen.values() if c.makespan is not None]
        return min(timed, key=lambda c: (c.makespan, *self.rank(c))) if timed else None

    def _order(self, c: Candidate) -> tuple[int, int, int, int]:
        s = c.shape
        return ([a.partition.name for a in self.axes].index(c.partition.name), s.nodes,
                s.nodes * s.ntasks_per_node, s.gpus_per_node)

    def _evaluate(self, part: Partition, shape: Shape) -> Candidate:
        """Simulate unless the lower bound rules the shape out; cost, time, efficiency."""
        unit = cost_unit(shape, part)[1]
        if shape.workers < 1:
            return Candidate(part, shape, None, None, None, unit, False,
                             "no rank left for a worker beside the coordinator")
        bound = lower_bound(self.plan, self.analysis, shape.workers * shape.cpus_per_task)
        ruled_out = self._ruled_out(bound, part)
        if ruled_out:
            return Candidate(part, shape, None, None, None, unit, False, ruled_out, bound)
        try:
            makespan = simulate(self.plan, self.analysis,
                                allocation_slots(shape, part, self.profile.memory)).makespan
        except ResourceError as exc:
            return Candidate(part, shape, None, None, None, unit, False, f"does not fit: {exc}")
        time = requested_time(makespan, self.profile)
        limit = self._limit_of(part)
        fits = limit is None or time <= limit
        return Candidate(part, shape, makespan, time, cost(shape, part, makespan), unit, fits,
                         "" if fits else "over the limit", None,
                         _efficiency(self.plan, shape, part, makespan), charge(shape, part, makespan))

    def _limit_of(self, part: Partition) -> float | None:
        """The search's limit, or the partition's own max time where that is shorter."""
        limits = [x for x in (self.limit, part.max_seconds) if x is not None]
        return min(limits) if limits else None

    def _ruled_out(self, bound: float, part: Partition) -> str:
        """Why a shape need not be simulated (its lower bound cannot be good), or ''.
        Nothing is ruled out before the fastest is known, so a chain has its figures."""
        fastest = self.fastest
        if fastest is None or fastest.makespan is None:
            return ""
        limit = self._limit_of(part)
        if fastest.fits and limit is not None and requested_time(bound, self.profile) > limit:
            return "not simulated: even its lower bound is over the limit"
        if not self.deadline and bound > fastest.makespan * (1 + self.profile.tolerance) + 1e-9:
            return "not simulated: even its lower bound is not within the tolerance"
        return ""


def _efficiency(plan: Plan, shape: Shape, part: Partition, makespan: float) -> float | None:
    """The work (core- or GPU-seconds) over what the candidate is charged for."""
    if makespan <= 0:
        return None
    weight = plan.gpus if cost_unit(shape, part)[1] == "GPU-h" else plan.cores
    work = float((plan.time * weight.astype("int64") * plan.ranks).sum())
    held = charge(shape, part, makespan) * 3600
    return min(1.0, work / held) if held else None
