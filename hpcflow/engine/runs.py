"""Runs: consecutive members of a sweep over values, sent to a worker as one call.

For tasks of a few microseconds, what the coordinator does per task (bind the
arguments, take the fingerprint, build and pickle a call) costs more than the task.
Once the core has learnt that tasks are short (queue depth above 1), it sends members
``i .. i + n - 1`` of a *closed* group as ONE call with ``count = n``, and the worker
expands it (:func:`expand`): each member's arguments from the group's own
:class:`~hpcflow.plan.plan.Binder`, shipped once at set-up, and its fingerprint by the
coordinator's own formula (``store.resume.fingerprint``). The members then run one by
one, each with its own outcome; the coordinator still journals a DISPATCH and a DONE
per member, so resume, status and the report see tasks as before.

A group is closed when nothing it binds comes from another task: a sweep over values
(no references among its arguments or sweep values), with no predecessors at all
(not even order-only ones), of Python tasks without a time-out. The core also asks that
its tasks take one slot without GPUs, that the backend's workers expand runs
(``runs = True``: local, MPI, Dask and Ray), and that ``--isolate`` is off.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcflow.engine.execute import Call
from hpcflow.model.task import MethodCall, PythonCall
from hpcflow.plan.plan import Binder, Plan
from hpcflow.store.resume import definition_hash, definition_prefix, fingerprint

_new = tuple.__new__
_NO_RESULTS: dict[int, object] = {}


@dataclass(frozen=True)
class RunSpec:
    """What a worker needs to expand runs of one group."""

    binder: Binder
    prefix: bytes  # the group's fingerprint prefix
    name: str
    start: int


def closed_groups(plan: Plan) -> list[int]:
    """Indices of the groups whose members may travel as runs."""
    pred_ptr = plan.pred_ptr
    closed = []
    for g, group in enumerate(plan.groups):
        task = group.task
        if (group.size > 1 and isinstance(task.action, (PythonCall, MethodCall))
                and task.timeout is None and task.resources.ranks == 1
                and not task.resources.gpus
                and pred_ptr[group.start] == pred_ptr[group.start + group.size]
                and Binder(group, plan.groups).closed):
            closed.append(g)
    return closed


def run_specs(plan: Plan) -> dict[int, RunSpec]:
    """The :class:`RunSpec` of each closed group, for the workers' set-up."""
    specs = {}
    for g in closed_groups(plan):
        group = plan.groups[g]
        prefix = definition_prefix(definition_hash(group, plan.groups, plan.python_path))
        specs[g] = RunSpec(Binder(group, ()), prefix, group.name, group.start)
    return specs


def expand(spec: RunSpec, call: Call) -> list[Call]:
    """The member calls of a run, each with its arguments and fingerprint."""
    binder, start, name = spec.binder, spec.start, spec.name
    calls = []
    for i in range(call.id, call.id + call.count):
        member = i - start
        args, kwargs = binder.bind(member, _NO_RESULTS)
        fp = fingerprint(spec.prefix, (), binder.values_in(kwargs))
        calls.append(_new(Call, (i, call.attempt, call.group, f"{name}[{member}]", args, kwargs,
                                 call.gpus, call.timeout, call.peers, call.isolate, 1, fp)))
    return calls
