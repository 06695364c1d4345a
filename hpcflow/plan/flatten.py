"""Flatten a :class:`Workflow` (nesting, sweeps) into a :class:`Plan`.

Model tasks are visited in topological order; a nested workflow is expanded in place
with its task names prefixed (``stats/mean``) and its inputs bound to the caller's
arguments. Each leaf task becomes one :class:`Group` whose instances get the next
contiguous ids, so **every edge goes from a lower id to a higher one**: the id order is
a topological order, and the analyses can work group by group with numpy.

Edges are generated per group with array arithmetic (a sweep of a million members is
a handful of numpy calls), then deduplicated and packed into CSR.
"""

from __future__ import annotations

import graphlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpcflow.errors import Location, SpecError
from hpcflow.model.task import Param, Ref, ShellCommand, SubWorkflow, Task
from hpcflow.model.workflow import REQUIRED, Workflow
from hpcflow.plan.plan import Group, GroupRef, Plan, map_group_refs

MAX_TASKS = 50_000_000
"""A workflow may not expand to more instances than this (a typo in a sweep, say)."""


@dataclass
class _Scope:
    """Names visible inside one (possibly nested) workflow while flattening it."""

    prefix: str
    params: dict[str, Any]
    location: Location | None = None
    groups_of: dict[str, list[int]] = field(default_factory=dict)  # task id -> its group ids
    refs_of: dict[str, GroupRef] = field(default_factory=dict)  # leaf task id -> its ref
    outputs_of: dict[str, dict[str, GroupRef]] = field(default_factory=dict)  # nested id


@dataclass
class _Builder:
    groups: list[Group] = field(default_factory=list)
    sources: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    total: int = 0


def flatten(workflow: Workflow) -> Plan:
    """Expand ``workflow`` into a plan. Raises :class:`SpecError` for what the model alone
    could not check (a plain reference to a swept task, a bad sweep index, size limits)."""
    builder = _Builder()
    scope = _Scope(prefix="", params={k: v for k, v in workflow.inputs.items() if v is not REQUIRED},
                   location=workflow.location)
    missing = [k for k, v in workflow.inputs.items() if v is REQUIRED]
    if missing:
        raise SpecError(f"workflow input(s) {', '.join(missing)} have no value", field="inputs",
                        location=workflow.location)
    _expand(workflow, scope, builder)
    outputs = {name: _resolve_ref(ref, scope, builder, None, f"outputs.{name}")
               for name, ref in workflow.outputs.items()}
    plan = _assemble(workflow.name, builder, outputs)
    plan.python_path = _python_path(workflow)
    return plan


def _python_path(workflow: Workflow) -> list[str]:
    """The folders of the root workflow and of every nested one, without repeats."""
    seen: dict[str, None] = dict.fromkeys(workflow.python_path)
    for task in workflow.tasks.values():
        if isinstance(task.action, SubWorkflow):
            seen.update(dict.fromkeys(_python_path(task.action.workflow)))
    return list(seen)


def _expand(workflow: Workflow, scope: _Scope, builder: _Builder) -> None:
    sorter = graphlib.TopologicalSorter({tid: t.upstream() for tid, t in workflow.tasks.items()})
    for tid in sorter.static_order():
        task = workflow.tasks[tid]
        if isinstance(task.action, SubWorkflow):
            _expand_nested(task, scope, builder)
        else:
            _add_group(task, scope, builder)


def _expand_nested(task: Task, scope: _Scope, builder: _Builder) -> None:
    sub = task.action.workflow  # type: ignore[union-attr]
    if task.sweep is not None:
        raise SpecError("a nested workflow cannot be swept; sweep a task inside it",
                        task=task.id, field="sweep", location=task.location)
    if task.args:
        raise SpecError("a nested workflow takes its inputs by name", task=task.id,
                        field="args", location=task.location)
    params = {k: v for k, v in sub.inputs.items() if v is not REQUIRED}
    for name, value in task.kwargs.items():
        if name not in sub.inputs:
            raise SpecError(f"workflow '{sub.name}' has no input '{name}'", task=task.id,
                            field=f"inputs.{name}", location=task.location)
        params[name] = _resolve(value, scope, builder, task, f"inputs.{name}")
    missing = sorted(set(sub.inputs) - set(params))
    if missing:
        raise SpecError(f"missing input(s) {', '.join(missing)} of workflow '{sub.name}'",
                        task=task.id, field="inputs", location=task.location)
    inner = _Scope(prefix=f"{scope.prefix}{task.id}/", params=params, location=sub.location)
    first_group = len(builder.groups)
    after_ids = _after_ids(task, scope)
    _expand(sub, inner, builder)
    if after_ids.size:  # order-only deps of the nested task hold for all of its tasks
        for group in builder.groups[first_group:]:
            _add_all_edges(builder, group, after_ids)
    scope.groups_of[task.id] = list(range(first_group, len(builder.groups)))
    scope.outputs_of[task.id] = {
        name: _resolve_ref(ref, inner, builder, task, f"outputs.{name}")
        for name, ref in sub.outputs.items()
    }


def _add_group(task: Task, scope: _Scope, builder: _Builder) -> None:
    index = len(builder.groups)
    args = _resolve(task.args, scope, builder, task, "args")
    kwargs = _resolve(task.kwargs, scope, builder, task, "args")
    sweep_params: dict[str, Any] = {}
    shape: tuple[int, ...] = ()
    size = 1
    if task.sweep is not None:
        sweep_params, shape, size = _resolve_sweep(task, scope, builder)
    if builder.total + size > MAX_TASKS:
        raise SpecError(f"the workflow expands to more than {MAX_TASKS} task instances",
                        task=task.id, field="sweep", location=task.location)
    group = Group(
        name=f"{scope.prefix}{task.id}", task=task, start=builder.total, size=size,
        args=args, kwargs=kwargs, sweep_params=sweep_params, sweep_shape=shape,
        sweep_mode=task.sweep.mode if task.sweep else "product",
    )
    builder.groups.append(group)
    builder.total += size
    scope.groups_of[task.id] = [index]
    scope.refs_of[task.id] = GroupRef(index)
    _add_edges(group, builder, _after_ids(task, scope))


def _resolve_sweep(task: Task, scope: _Scope,
                   builder: _Builder) -> tuple[dict[str, Any], tuple[int, ...], int]:
    params: dict[str, Any] = {}
    lengths: list[int] = []
    for name, value in task.sweep.params.items():  # type: ignore[union-attr]
        where = {"task": task.id, "field": f"sweep.{name}", "location": task.location}
        if isinstance(value, Ref):
            ref = _resolve_ref(Ref(value.task, value.key, "one"), scope, builder, task,
                               f"sweep.{name}", allow_swept=True)
            upstream = builder.groups[ref.group]
            index = None
            if value.index is not None:
                index = np.asarray(value.index, dtype=np.int64)
                if index.size and (index.min() < 0 or index.max() >= upstream.size):
                    raise SpecError(f"index out of range for '{upstream.name}' "
                                    f"({upstream.size} instances)", **where)
            params[name] = GroupRef(ref.group, ref.key, "each", index, name)
            lengths.append(len(index) if index is not None else upstream.size)
        else:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise SpecError("a sweep value must be a list of values", **where)
            params[name] = value
            lengths.append(len(value))
        if lengths[-1] == 0:
            raise SpecError("a sweep parameter has no values", **where)
    mode = task.sweep.mode  # type: ignore[union-attr]
    if mode == "zip" and len(set(lengths)) > 1:
        raise SpecError(f"zip sweep needs parameters of equal length, got {lengths}",
                        task=task.id, field="sweep", location=task.location)
    size = math.prod(lengths) if mode == "product" else lengths[0]
    shape = tuple(lengths) if mode == "product" else (lengths[0],)
    return params, shape, size


def _resolve(value: Any, scope: _Scope, builder: _Builder, task: Task, path: str) -> Any:
    if isinstance(value, Ref):
        return _resolve_ref(value, scope, builder, task, path)
    if isinstance(value, Param):
        return scope.params[value.name]
    if isinstance(value, list):
        return [_resolve(v, scope, builder, task, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_resolve(v, scope, builder, task, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        return {k: _resolve(v, scope, builder, task, f"{path}.{k}") for k, v in value.items()}
    return value


def _resolve_ref(ref: Ref, scope: _Scope, builder: _Builder, task: Task | None, path: str,
                 allow_swept: bool = False) -> GroupRef:
    where = {"task": task.id if task else None, "field": path,
             "location": task.location if task else scope.location}
    if ref.task in scope.outputs_of:
        outputs = scope.outputs_of[ref.task]
        if ref.key is None and len(outputs) != 1:
            raise SpecError(f"nested workflow '{ref.task}' has outputs {sorted(outputs)}: "
                            "name one", **where)
        key = ref.key if ref.key is not None else next(iter(outputs))
        if key not in outputs:
            raise SpecError(f"nested workflow '{ref.task}' has no output '{key}' "
                            f"(it has {sorted(outputs)})", **where)
        return outputs[key]
    base = scope.refs_of[ref.task]
    upstream = builder.groups[base.group]
    _check_key(upstream, ref.key, where)
    if ref.mode == "one" and upstream.swept and not allow_swept:
        raise SpecError(f"task '{ref.task}' is swept ({upstream.size} instances): use "
                        f"'{ref.task}[*]' (YAML: \"${{{ref.task}[*]}}\", Python: ref.all()) for all of their "
                        "outputs, or sweep over it", **where)
    return GroupRef(base.group, ref.key, "all" if ref.mode == "all" else "one")


def _check_key(upstream: Group, key: str | None, where: dict[str, Any]) -> None:
    action = upstream.task.action
    if key is None or not isinstance(action, ShellCommand):
        return
    if action.stdout:
        raise SpecError(f"task '{upstream.task.id}' gives its stdout text, which has no "
                        f"item '{key}'", **where)
    if key not in action.outputs:
        raise SpecError(f"task '{upstream.task.id}' declares no output '{key}' "
                        f"(it declares {sorted(action.outputs)})", **where)


def _after_ids(task: Task, scope: _Scope) -> np.ndarray:
    groups = [g for dep in task.after for g in scope.groups_of[dep]]
    return np.asarray(groups, dtype=np.int64)


def _group_ids(builder: _Builder, group_indices: Sequence[int]) -> np.ndarray:
    ranges = [np.arange(builder.groups[g].start, builder.groups[g].start + builder.groups[g].size)
              for g in group_indices]
    return np.concatenate(ranges) if ranges else np.empty(0, np.int64)


def _add_all_edges(builder: _Builder, group: Group, upstream_groups: np.ndarray) -> None:
    """Every member of ``group`` after every instance of ``upstream_groups``."""
    sources = _group_ids(builder, upstream_groups.tolist())
    members = np.arange(group.start, group.start + group.size, dtype=np.int64)
    builder.sources.append(np.tile(sources, group.size))
    builder.targets.append(np.repeat(members, sources.size))


def _add_edges(group: Group, builder: _Builder, after_groups: np.ndarray) -> None:
    plain: list[int] = list(after_groups.tolist())
    one_ids: list[int] = []

    def on_ref(ref: GroupRef) -> None:
        if ref.mode == "all":
            plain.append(ref.group)
        else:
            one_ids.append(builder.groups[ref.group].start)

    map_group_refs(group.args, on_ref)
    map_group_refs(group.kwargs, on_ref)
    if plain:
        _add_all_edges(builder, group, np.unique(np.asarray(plain, dtype=np.int64)))
    members = np.arange(group.start, group.start + group.size, dtype=np.int64)
    if one_ids:
        ids = np.unique(np.asarray(one_ids, dtype=np.int64))
        builder.sources.append(np.tile(ids, group.size))
        builder.targets.append(np.repeat(members, ids.size))
    for axis, value in enumerate(group.sweep_params.values()):
        if isinstance(value, GroupRef):
            positions = _positions(group, axis)
            offsets = value.index[positions] if value.index is not None else positions
            builder.sources.append(builder.groups[value.group].start + offsets)
            builder.targets.append(members)


def _positions(group: Group, axis: int) -> np.ndarray:
    members = np.arange(group.size, dtype=np.int64)
    if group.sweep_mode == "zip":
        return members
    return np.unravel_index(members, group.sweep_shape)[axis].astype(np.int64)


def _assemble(name: str, builder: _Builder, outputs: dict[str, GroupRef]) -> Plan:
    n = builder.total
    sizes = np.fromiter((g.size for g in builder.groups), np.int64, len(builder.groups))
    group_of = np.repeat(np.arange(len(builder.groups), dtype=np.int32), sizes)

    def per_task(values: list[Any], dtype: Any) -> np.ndarray:
        return np.repeat(np.asarray(values, dtype=dtype), sizes)

    res = [g.task.resources for g in builder.groups]
    src = np.concatenate(builder.sources) if builder.sources else np.empty(0, np.int64)
    dst = np.concatenate(builder.targets) if builder.targets else np.empty(0, np.int64)
    pred_ptr, pred, succ_ptr, succ = build_csr(n, src, dst)
    return Plan(
        workflow=name, groups=builder.groups, group_of=group_of,
        pred_ptr=pred_ptr, pred=pred, succ_ptr=succ_ptr, succ=succ,
        cores=per_task([r.cores for r in res], np.int32),
        gpus=per_task([r.gpus for r in res], np.int32),
        ranks=per_task([r.ranks for r in res], np.int32),
        memory=per_task([r.memory for r in res], np.int64),
        time=per_task([r.time_estimate for r in res], np.float64),
        outputs=outputs,
    )


def build_csr(n: int, src: np.ndarray, dst: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deduplicated predecessor and successor CSR arrays from edge lists ``src -> dst``."""
    if src.size:
        # sorted by dst, then src, without repeats. Not np.unique: numpy 2's hash-based
        # unique took 1.5 s on 2M edges; a stable sort of these nearly sorted runs ~0.04 s.
        keys = np.sort(dst.astype(np.int64) * n + src.astype(np.int64), kind="stable")
        keep = np.empty(keys.size, bool)
        keep[0] = True
        np.not_equal(keys[1:], keys[:-1], out=keep[1:])
        dst, src = np.divmod(keys[keep], n)
    pred_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=pred_ptr[1:])
    pred = src.astype(np.int32)
    order = np.argsort(src, kind="stable")
    succ_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=succ_ptr[1:])
    succ = dst[order].astype(np.int32)
    return pred_ptr, pred, succ_ptr, succ
