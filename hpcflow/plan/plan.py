"""The plan: a flattened workflow as integer-indexed numpy arrays.

Every task instance has an integer id ``0..n-1``. The instances of one model task (one
*group*: a task after nesting is resolved, swept or not) occupy a contiguous id range
``[group.start, group.start + group.size)``, so a member's sweep position and its
upstream instances are arithmetic, not per-task records. The graph is kept twice in
CSR form (predecessors and successors); per-task resources are flat arrays. This keeps
a million-task plan at well under 500 bytes per task.

Argument values of a group's task hold :class:`GroupRef` where the model had ``Ref``
and ``Param``: :meth:`Plan.inputs_of` and :func:`bind_args` turn them into the ids whose
results a member needs, and into concrete arguments once those results exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hpcflow.model.task import Task


@dataclass(frozen=True, slots=True, eq=False)
class GroupRef:
    """A reference resolved to a group: ``mode`` one/all as in the model; ``each`` means
    member k takes upstream member ``index[pos]`` (or ``pos``), where ``pos`` is the
    member's position along the sweep parameter ``param``."""

    group: int
    key: str | None = None
    mode: Literal["one", "all", "each"] = "one"
    index: Any = None  # numpy int array or None
    param: str | None = None


@dataclass(eq=False)
class Group:
    """One model task after nesting is resolved: ``size`` instances from id ``start``."""

    name: str
    task: Task
    start: int
    size: int
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    sweep_params: dict[str, Sequence[Any] | GroupRef] = field(default_factory=dict)
    sweep_shape: tuple[int, ...] = ()
    sweep_mode: str = "product"

    @property
    def swept(self) -> bool:
        return bool(self.sweep_params)

    def positions(self, member: int) -> dict[str, int]:
        """Position of ``member`` along each sweep parameter."""
        names = list(self.sweep_params)
        if self.sweep_mode == "zip" or len(names) == 1:
            return dict.fromkeys(names, member)
        coords = np.unravel_index(member, self.sweep_shape)
        return {name: int(c) for name, c in zip(names, coords, strict=True)}

    def member_name(self, member: int) -> str:
        return f"{self.name}[{member}]" if self.swept else self.name


@dataclass(eq=False)
class Plan:
    """A flattened workflow; see the module docstring for the layout."""

    workflow: str
    groups: list[Group]
    group_of: np.ndarray  # int32[n]
    pred_ptr: np.ndarray  # int64[n+1]
    pred: np.ndarray  # int32[E]
    succ_ptr: np.ndarray  # int64[n+1]
    succ: np.ndarray  # int32[E]
    cores: np.ndarray  # int32[n]
    gpus: np.ndarray  # int32[n]
    ranks: np.ndarray  # int32[n]
    memory: np.ndarray  # int64[n], bytes
    time: np.ndarray  # float64[n], seconds (estimate; default filled in)
    outputs: dict[str, GroupRef] = field(default_factory=dict)
    python_path: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.group_of.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.pred.shape[0])

    def group(self, i: int) -> Group:
        return self.groups[int(self.group_of[i])]

    def name(self, i: int) -> str:
        group = self.group(i)
        return group.member_name(int(i) - group.start)

    def index_of(self, name: str) -> int:
        """Task id from a name such as ``stats/mean`` or ``sim[3]``."""
        base, _, rest = name.partition("[")
        member = int(rest.rstrip("]")) if rest else 0
        for group in self.groups:
            if group.name == base and 0 <= member < group.size:
                return group.start + member
        raise KeyError(name)

    def predecessors(self, i: int) -> np.ndarray:
        return self.pred[self.pred_ptr[i] : self.pred_ptr[i + 1]]

    def successors(self, i: int) -> np.ndarray:
        return self.succ[self.succ_ptr[i] : self.succ_ptr[i + 1]]

    def inputs_of(self, i: int) -> list[int]:
        """Ids whose results task ``i`` reads (data edges only; order-only edges excluded)."""
        group = self.group(i)
        needed: list[int] = []
        visit_group_refs(group, int(i) - group.start, self.groups, lambda ids: needed.extend(ids))
        return needed

    def bind(self, i: int, results: Mapping[int, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Concrete ``(args, kwargs)`` of task ``i`` from its inputs' results."""
        group = self.group(i)
        return bind_args(group, int(i) - group.start, self.groups, results)


def _ids_of(ref: GroupRef, groups: Sequence[Group], position: int | None) -> range | list[int]:
    up = groups[ref.group]
    if ref.mode == "all":
        return range(up.start, up.start + up.size)
    if ref.mode == "each":
        assert position is not None
        offset = int(ref.index[position]) if ref.index is not None else position
        return [up.start + offset]
    return [up.start]


def map_group_refs(value: Any, fn: Callable[[GroupRef], Any]) -> Any:
    if isinstance(value, GroupRef):
        return fn(value)
    if isinstance(value, list):
        return [map_group_refs(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(map_group_refs(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_group_refs(v, fn) for k, v in value.items()}
    return value


def visit_group_refs(group: Group, member: int, groups: Sequence[Group],
                     visit: Callable[[Sequence[int]], None]) -> None:
    """Call ``visit`` with the upstream ids of each reference in ``member``'s inputs."""
    def on_ref(ref: GroupRef) -> None:
        visit(_ids_of(ref, groups, None))

    map_group_refs(group.args, on_ref)
    map_group_refs(group.kwargs, on_ref)
    if group.swept:
        positions = group.positions(member)
        for name, value in group.sweep_params.items():
            if isinstance(value, GroupRef):
                visit(_ids_of(value, groups, positions[name]))


def _pick(value: Any, key: str | None) -> Any:
    return value if key is None else value[key]


def bind_args(group: Group, member: int, groups: Sequence[Group],
              results: Mapping[int, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Substitute results (``results[id]``) for the references of ``member``'s inputs."""
    return Binder(group, groups).bind(member, results)


class Binder:
    """:func:`bind_args` for the members of one group, with what does not depend on the
    member worked out once: the coordinator binds every task it dispatches, so a member
    of a sweep over constants costs a dict copy and one lookup per swept parameter.

    A member's position along sweep axis k is ``member // stride[k] % size[k]`` (C
    order, as ``np.unravel_index``; a zip sweep or a single axis has stride 1)."""

    __slots__ = ("_args", "_const", "_groups", "_kwargs", "_names", "_refs", "_valued")

    def __init__(self, group: Group, groups: Sequence[Group]) -> None:
        self._groups = groups
        self._args, self._kwargs = group.args, group.kwargs
        self._const = not (_has_refs(group.args) or _has_refs(group.kwargs))
        names = list(group.sweep_params)
        one_axis = group.sweep_mode == "zip" or len(names) <= 1
        shape = (group.size,) * len(names) if one_axis else group.sweep_shape
        strides = [1] * len(names) if one_axis else [
            int(np.prod(shape[k + 1:], dtype=np.int64)) for k in range(len(names))]
        self._valued: list[tuple[str, Any, int, int]] = []  # name, values, stride, size
        self._refs: list[tuple[str, int, list[int] | None, str | None, int, int]] = []
        for k, name in enumerate(names):
            value, size = group.sweep_params[name], max(1, int(shape[k]))
            if isinstance(value, GroupRef):  # name, upstream start, index, key, stride, size
                index = None if value.index is None else np.asarray(value.index).tolist()
                self._refs.append((name, groups[value.group].start, index, value.key,
                                   strides[k], size))
            else:
                self._valued.append((name, value, strides[k], size))
        self._valued.sort(key=lambda axis: axis[0])
        self._names = tuple(axis[0] for axis in self._valued)

    def bind(self, member: int, results: Mapping[int, Any]
             ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self._const:
            args, kwargs = self._args, dict(self._kwargs)
        else:
            def on_ref(ref: GroupRef) -> Any:
                ids = _ids_of(ref, self._groups, None)
                if ref.mode == "all":
                    return [_pick(results[j], ref.key) for j in ids]
                return _pick(results[ids[0]], ref.key)

            args = map_group_refs(self._args, on_ref)
            kwargs = map_group_refs(self._kwargs, on_ref)
        for name, up, index, key, stride, size in self._refs:
            pos = member // stride % size
            value = results[up + (pos if index is None else index[pos])]
            kwargs[name] = value if key is None else value[key]
        for name, values, stride, size in self._valued:
            kwargs[name] = _scalar(values[member // stride % size])
        return args, kwargs

    @property
    def closed(self) -> bool:
        """Whether members bind without any other task's result (``engine/runs.py``)."""
        return self._const and not self._refs

    @property
    def swept_values(self) -> bool:
        """Whether the group sweeps over values (not only over other tasks' results)."""
        return bool(self._valued)

    def values(self, member: int) -> tuple[Any, ...]:
        """The member's concrete sweep values (not the references), by parameter name."""
        return tuple(_scalar(values[member // stride % size])
                     for _, values, stride, size in self._valued)

    def values_in(self, kwargs: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """:meth:`values` read from the keyword arguments that :meth:`bind` made (None
        when the group sweeps over no values)."""
        names = self._names
        if len(names) == 1:
            return (kwargs[names[0]],)
        return tuple(kwargs[name] for name in names) if names else None


def _has_refs(value: Any) -> bool:
    found = False

    def seen(ref: GroupRef) -> None:
        nonlocal found
        found = True

    map_group_refs(value, seen)
    return found


def _scalar(value: Any) -> Any:
    """Numpy scalars from array-valued sweeps become plain Python values."""
    return value.item() if isinstance(value, np.generic) else value
