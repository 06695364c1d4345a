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

from hpcflow.scheduler.slurm.shape import Axis

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
