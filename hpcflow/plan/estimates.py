"""Estimates of a task's duration and peak memory from its recent measured attempts.

A task definition's history (``hpcflow/store/history.py``) is a list of :class:`Sample`:
one finished attempt each, with how it ended. From those:

- the **median** of the attempts that succeeded (``done``) is the prediction: what the
  planner and the makespan use. A ``failed`` attempt (an error of its own) is kept in
  the history but counts for nothing: it may have stopped at any point;
- the **high quantile** (:data:`QUANTILE`) times ``1 + margin``, the margin
  :data:`MARGIN` / sqrt(samples) shrinking as samples grow (50% after one run, 5%
  after a hundred), is what a request covering one task asks for;
- sweep members share their definition's samples, unless a member's own differ clearly
  (:func:`member_times`);
- an attempt ended by its timeout (for the duration) or by the OOM killer (for the
  memory) only says the true value was larger: it is a *lower bound*. Bounds never
  lower an estimate: each value is at least the largest bound among the samples.

Pure functions over plain data, so that the rules can be tested on recorded samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from hpcflow.model.resources import format_memory

QUANTILE = 0.95
MARGIN = 0.5
OUTCOMES = ("done", "failed", "timeout", "oom")
MEMBER_SAMPLES = 3
MEMBER_FACTOR = 1.5
"""A sweep member with this many samples of its own, whose median is further than this
factor from its group's, is planned with its own median (the others share the group's)."""
FAR_FACTOR = 4.0
"""Declared and measured values further apart than this factor are warned about..."""
FAR_SECONDS = 300.0
FAR_BYTES = 2**30
"""...and further apart than these: a padding of seconds or megabytes costs nothing."""


class Sample(NamedTuple):
    """One finished attempt: seconds it ran, peak RSS in bytes (0: not measured), how it
    ended (one of :data:`OUTCOMES`)."""

    duration: float
    memory: int
    outcome: str


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the samples say of one quantity: ``count`` measured values, their
    ``median``, ``high`` quantile and ``largest``; ``request`` the high quantile with
    its margin; ``bound`` the largest lower bound (0: none). Every value is at least
    ``bound``."""

    count: int
    median: float
    high: float
    largest: float
    request: float
    bound: float


def estimate(values: Sequence[float], bounds: Sequence[float] = ()) -> Estimate | None:
    """The :class:`Estimate` of measured ``values`` and lower ``bounds``; None when
    there is neither."""
    bound = max(bounds, default=0.0)
    if not values:
        if not bound:
            return None
        return Estimate(0, bound, bound, bound, bound * (1 + MARGIN), bound)
    ordered = sorted(values)
    median, high = _quantile(ordered, 0.5), _quantile(ordered, QUANTILE)
    request = high * (1 + MARGIN / math.sqrt(len(ordered)))
    return Estimate(len(ordered), max(median, bound), max(high, bound), max(ordered[-1], bound),
                    max(request, bound), bound)


def duration_estimate(samples: Sequence[Sample]) -> Estimate | None:
    """Durations of attempts that succeeded; a timeout is a lower bound."""
    values = [s.duration for s in samples if s.outcome == "done"]
    return estimate(values, [s.duration for s in samples if s.outcome == "timeout"])


def memory_estimate(samples: Sequence[Sample]) -> Estimate | None:
    """Peak memory of attempts that succeeded and measured it; one the OOM killer ended
    is a lower bound (what it had reached when it was read, 0 if nothing was)."""
    values = [float(s.memory) for s in samples if s.memory > 0 and s.outcome == "done"]
    return estimate(values, [float(s.memory) for s in samples if s.outcome == "oom"])


def member_times(group: Estimate, members: Mapping[int, Sequence[Sample]]) -> dict[int, float]:
    """The sweep members whose own durations differ clearly from their group's: at least
    :data:`MEMBER_SAMPLES` succeeded attempts whose median is more than
    :data:`MEMBER_FACTOR` away from the group's. Member -> its own median."""
    own: dict[int, float] = {}
    for member, samples in members.items():
        d = duration_estimate(samples)
        if d is None or d.count < MEMBER_SAMPLES:
            continue
        if d.median > group.median * MEMBER_FACTOR or d.median * MEMBER_FACTOR < group.median:
            own[member] = d.median
    return own


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def far_apart(declared: float, measured: Estimate | None, least: float) -> bool:
    """Whether a declared value is more than :data:`FAR_FACTOR` and ``least`` from every
    measured one: above the largest, or below the median."""
    if not declared or measured is None or not measured.count:
        return False
    if abs(declared - measured.median) < least:
        return False
    return declared > FAR_FACTOR * measured.largest or declared * FAR_FACTOR < measured.median


@dataclass(frozen=True, slots=True)
class GroupEstimate:
    """What the plan uses for one group and why: ``source`` is ``declared``, ``learned``
    or ``default`` (for the time; the memory is ``learned`` when ``memory`` is set)."""

    name: str
    definition: str
    source: str
    time: float
    declared_time: float | None
    declared_memory: int
    duration: Estimate | None = None
    memory: Estimate | None = None
    runs: int = 0
    members: Mapping[int, float] = field(default_factory=dict)
    """Sweep members timed by their own samples (:func:`member_times`): member -> seconds."""

    def warnings(self) -> list[str]:
        """Where the declaration is far from what was measured (one line each)."""
        said = []
        d = self.duration
        if self.declared_time is not None and d is not None and far_apart(self.declared_time, d, FAR_SECONDS):
            said.append(f"{self.name}: declared time {format_seconds(self.declared_time)}, "
                        f"measured {format_seconds(d.median)} median, at most "
                        f"{format_seconds(d.largest)} over {d.count} attempts")
        m = self.memory
        if self.declared_memory and m is not None and far_apart(self.declared_memory, m, FAR_BYTES):
            said.append(f"{self.name}: declared memory {format_memory(self.declared_memory)}, "
                        f"measured peak {format_memory(int(m.largest))} over {m.count} attempts")
        return said


def format_seconds(seconds: float) -> str:
    """``3m50s``, ``2h``, ``1.5s``: short, for a line of the plan."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "",
             f"{secs}s" if secs else ""]
    return "".join(parts)
