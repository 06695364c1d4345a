"""A plan whose time and memory come from the history where it has measured them.

``plan, estimates = with_learned(plan, history)`` is what ``hpcflow plan`` and
``submit`` size and predict with. Per group, keyed by its definition hash:

- **time**: the median of the measured durations (never below a timeout's lower
  bound); a sweep member whose own samples differ clearly, its own median. The whole
  run's request adds the sizing's own margin to the makespan, where task-to-task
  spread averages out, so a per-task quantile would pad it twice;
- **memory**: the high quantile with its margin (``plan/estimates.py``), rounded up
  to a MiB: one task over its memory is killed, whatever the others do.

For predictions both replace the declared value up or down (a task that grew must not
be predicted from an old declaration). For requests (``within_declared``: ``plan
--slurm`` and ``submit`` unless ``--above-declared``) a declared value is what the user
allows, so a learned value may lower it but not raise it (the design brief: "a request
never exceeds them unless asked"); the plan's warning says where the declaration is
below what was measured. ``timeout:`` is left alone: it stays the limit that kills a
task. A group the history has not measured keeps what it declares (or the default time).
"""

from __future__ import annotations

import dataclasses
import math

from hpcflow.model.resources import DEFAULT_TIME_ESTIMATE
from hpcflow.plan.estimates import (
    GroupEstimate,
    duration_estimate,
    member_times,
    memory_estimate,
)
from hpcflow.plan.plan import Group, Plan
from hpcflow.store.history import History
from hpcflow.store.resume import definition_hash

_MIB = 2**20


def with_learned(plan: Plan, history: History | None, *, within_declared: bool = False
                 ) -> tuple[Plan, list[GroupEstimate]]:
    """The plan with learned time and memory where ``history`` has samples (None: the
    plan as declared), and each group's :class:`GroupEstimate`; ``within_declared``:
    never above a declared time or memory (for requests)."""
    estimates = [_group_estimate(g, definition_hash(g, plan.groups, plan.python_path), history)
                 for g in plan.groups]
    if within_declared:
        estimates = [_within_declared(e) for e in estimates]
    learned = [e for e in estimates if e.source == "learned" or e.memory is not None]
    if not learned:
        return plan, estimates
    time, memory = plan.time.copy(), plan.memory.copy()
    groups = list(plan.groups)
    for k, (group, e) in enumerate(zip(plan.groups, estimates, strict=True)):
        span = slice(group.start, group.start + group.size)
        if e.source == "learned":
            time[span] = e.time
            for member, seconds in e.members.items():
                time[group.start + member] = seconds
        if e.memory is not None:
            memory[span] = math.ceil(e.memory.request / _MIB) * _MIB
        groups[k] = _with_resources(group, e, int(memory[group.start]) if group.size else 0)
    return dataclasses.replace(plan, groups=groups, time=time, memory=memory), estimates


def _within_declared(e: GroupEstimate) -> GroupEstimate:
    """``e`` with its time and memory request no higher than what the task declares."""
    changes: dict[str, object] = {}
    if e.source == "learned" and e.declared_time is not None and e.time > e.declared_time:
        changes["time"] = float(e.declared_time)
        changes["members"] = {m: min(t, e.declared_time) for m, t in e.members.items()}
    if e.memory is not None and e.declared_memory and e.memory.request > e.declared_memory:
        changes["memory"] = None
    return dataclasses.replace(e, **changes) if changes else e


def _group_estimate(group: Group, definition: str, history: History | None) -> GroupEstimate:
    declared = group.task.resources
    samples = history.samples(definition) if history is not None else []
    duration, memory = duration_estimate(samples), memory_estimate(samples)
    if duration is not None:
        source, time = "learned", duration.median
    else:
        source = "declared" if declared.time is not None else "default"
        time = declared.time if declared.time is not None else DEFAULT_TIME_ESTIMATE
    members: dict[int, float] = {}
    if duration is not None and history is not None and group.swept:
        members = {m: t for m, t in member_times(duration, history.member_samples(definition)
                                                 ).items() if 0 <= m < group.size}
    return GroupEstimate(group.name, definition, source, float(time), declared.time,
                         declared.memory, duration, memory, len(samples), members)


def _with_resources(group: Group, e: GroupEstimate, memory: int) -> Group:
    """The group's task with the learned values as its resources (so that what reads the
    task, not the arrays, sees them too)."""
    changes: dict[str, object] = {}
    if e.source == "learned":
        changes["time"] = e.time
    if e.memory is not None:
        changes["memory"] = memory
    resources = dataclasses.replace(group.task.resources, **changes)
    return dataclasses.replace(group, task=dataclasses.replace(group.task, resources=resources))
