"""The Python API: build a workflow by calling functions, as with ``dask.delayed``.

Calling a :class:`TaskFunction` runs nothing; it returns a :class:`TaskRef`, a handle on
the task's future output that can be passed to further calls. :func:`workflow`
collects every task reachable from the given outputs into a :class:`Workflow`,
naming them after their functions (``simulate``, ``simulate-2``, ...) unless named.

    @hf.task(cores=2, memory="1G")
    def simulate(alpha, seed): ...

    runs = simulate.sweep({"alpha": [0.1, 0.2]}, seed=1)   # two instances
    scores = score.map(runs)                                # one score per run
    best = pick(scores)                                     # a swept ref is gathered
    wf = hf.workflow("demo", outputs={"best": best})
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from hpcflow.errors import SpecError
from hpcflow.model.resources import Resources, parse_time
from hpcflow.model.task import (
    Action,
    MethodCall,
    Param,
    PythonCall,
    Ref,
    RefMode,
    ShellCommand,
    SubWorkflow,
    Sweep,
    Task,
    environment,
)
from hpcflow.model.workflow import REQUIRED, Workflow

_serial = itertools.count()


@dataclass(frozen=True)
class _Options:
    name: str | None = None
    resources: Resources = field(default_factory=Resources)
    retries: int = 0
    timeout: float | None = None
    after: tuple[TaskRef, ...] = ()


@dataclass(eq=False)
class _Node:
    """A task being built: arguments may still hold TaskRef objects."""

    hint: str
    action: Action
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: _Options
    sweep: Sweep | None = None
    serial: int = field(default_factory=lambda: next(_serial))


class TaskRef:
    """A handle on a task's output. ``ref["k"]`` picks an item; a swept task's ref passed
    to a plain call is gathered into a list, in sweep order."""

    __slots__ = ("_index", "_key", "_mode", "_node")

    def __init__(self, node: _Node, key: str | None = None, mode: RefMode = "one",
                 index: Sequence[int] | None = None) -> None:
        self._node, self._key, self._mode, self._index = node, key, mode, index

    def __getitem__(self, key: str) -> TaskRef:
        return TaskRef(self._node, key, self._mode, self._index)

    def all(self) -> TaskRef:
        """Every instance's output as one list (a gather)."""
        return TaskRef(self._node, self._key, "all")

    def each(self, index: Sequence[int] | None = None) -> TaskRef:
        """As a sweep value: one member per upstream instance (or per ``index`` entry)."""
        return TaskRef(self._node, self._key, "each", index)

    @property
    def swept(self) -> bool:
        return self._node.sweep is not None

    def __repr__(self) -> str:
        key = f"[{self._key!r}]" if self._key is not None else ""
        return f"<TaskRef {self._node.options.name or self._node.hint}{key} ({self._mode})>"


class TaskFunction:
    """A callable turned into a task. Call it (or :meth:`sweep`, :meth:`map`) to add a task."""

    def __init__(self, action: Action, hint: str, options: _Options | None = None) -> None:
        self.action = action
        self.hint = hint
        self._options = options or _Options()

    @property
    def func(self) -> Any:
        """The wrapped callable, to call directly (outside any workflow)."""
        return self.action.target if isinstance(self.action, PythonCall) else None

    def options(self, *, name: str | None = None, retries: int | None = None,
                timeout: str | float | None = None, after: Iterable[TaskRef] = (),
                env: Mapping[str, str | int | float] | None = None,
                **resources: Any) -> TaskFunction:
        """A copy with other options: ``name``, ``retries``, ``timeout``, ``after``, ``env``
        (environment variables set while it runs, merged over those given before) and the
        resources (``cores``, ``gpus``, ``memory``, ``time``, ``ranks``)."""
        action = self.action
        if env:
            action = replace(action, env=environment({**dict(action.env), **env}))
        opts = self._options
        new = replace(
            opts,
            name=name if name is not None else opts.name,
            retries=retries if retries is not None else opts.retries,
            timeout=parse_time(timeout) if timeout is not None else opts.timeout,
            after=opts.after + tuple(after),
            resources=opts.resources.updated(**resources) if resources else opts.resources,
        )
        return TaskFunction(action, self.hint, new)

    def __call__(self, *args: Any, **kwargs: Any) -> TaskRef:
        node = _Node(self.hint, self.action, args, kwargs, self._options)
        return TaskRef(node)

    def sweep(self, params: Mapping[str, Sequence[Any] | TaskRef], /, *args: Any,
              mode: Literal["product", "zip"] = "product", **kwargs: Any) -> TaskRef:
        """One instance per combination of ``params`` (keyword arguments of the call).

        A swept :class:`TaskRef` as a value sweeps over that task's instances."""
        swept = {
            name: value.each() if isinstance(value, TaskRef) and value._mode != "each" else value
            for name, value in params.items()
        }
        node = _Node(self.hint, self.action, args, kwargs, self._options, Sweep(swept, mode))
        return TaskRef(node)

    def map(self, **refs: TaskRef) -> TaskRef:
        """One instance per instance of the given swept tasks (zipped), by keyword."""
        return self.sweep(refs, mode="zip")


def task(func: Callable[..., Any] | str | None = None, /, *, name: str | None = None,
         retries: int = 0, timeout: str | float | None = None,
         env: Mapping[str, str | int | float] | None = None, **resources: Any) -> Any:
    """Decorator (bare or with options) turning a function into a :class:`TaskFunction`.

    ``func`` may also be a ``"module:qualname"`` string, imported where the task runs."""

    def wrap(target: Callable[..., Any] | str) -> TaskFunction:
        hint = target.rsplit(":", 1)[-1].rsplit(".", 1)[-1] if isinstance(target, str) \
            else getattr(target, "__name__", "task")
        base = TaskFunction(PythonCall(target), _safe_hint(hint))
        return base.options(name=name, retries=retries, timeout=timeout, env=env, **resources)

    return wrap if func is None else wrap(func)


def shell(command: str | Sequence[str], *, outputs: Mapping[str, str] | None = None,
          stdout: bool = False, name: str | None = None,
          env: Mapping[str, str | int | float] | None = None, **resources: Any) -> TaskFunction:
    """A program as a task; call the result with the values of its ``{placeholders}``."""
    cmd = command if isinstance(command, str) else tuple(command)
    first = (cmd.split() or ["shell"])[0] if isinstance(cmd, str) else (cmd or ("shell",))[0]
    action = ShellCommand(cmd, dict(outputs or {}), stdout, environment(env))
    return TaskFunction(action, _safe_hint(first.rsplit("/", 1)[-1])).options(name=name, **resources)


def method(cls: type | str, method_name: str, /, *init_args: Any,
           **init_kwargs: Any) -> TaskFunction:
    """``cls(*init_args, **init_kwargs).method_name(...)`` as a task, built where it runs."""
    action = MethodCall(cls, method_name, init_args, dict(init_kwargs))
    hint = cls.rsplit(":", 1)[-1] if isinstance(cls, str) else cls.__name__
    return TaskFunction(action, _safe_hint(f"{hint}.{method_name}"))


def param(name: str) -> Param:
    """An input of the workflow being built, filled when it is nested in another."""
    return Param(name)


def nested(sub: Workflow, /, *, name: str | None = None, **inputs: Any) -> TaskRef:
    """Use workflow ``sub`` as one task; ``ref["output"]`` reads its outputs."""
    missing = [k for k, v in sub.inputs.items() if v is REQUIRED and k not in inputs]
    if missing:
        raise SpecError(f"missing workflow input(s) {', '.join(missing)}", task=name or sub.name)
    unknown = sorted(set(inputs) - set(sub.inputs))
    if unknown:
        raise SpecError(f"unknown workflow input(s) {', '.join(unknown)}", task=name or sub.name)
    return TaskFunction(SubWorkflow(sub), sub.name).options(name=name)(**inputs)


def workflow(name: str, outputs: Mapping[str, TaskRef] | Sequence[TaskRef],
             inputs: Sequence[str] | Mapping[str, Any] = ()) -> Workflow:
    """Collect every task reachable from ``outputs`` into a :class:`Workflow`."""
    out_map = dict(outputs) if isinstance(outputs, Mapping) else {
        f"out{i}": ref for i, ref in enumerate(outputs)}
    nodes = _reachable(out_map.values())
    ids = _assign_ids(nodes)
    tasks = [_freeze(node, ids) for node in nodes]
    declared = dict(inputs) if isinstance(inputs, Mapping) else dict.fromkeys(inputs, REQUIRED)
    frozen_outputs = {k: _as_ref(v, ids) for k, v in out_map.items()}
    return Workflow.from_tasks(name, tasks, declared, frozen_outputs)


def _safe_hint(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in text) or "task"
    return cleaned if cleaned[0].isalpha() or cleaned[0] == "_" else f"t_{cleaned}"


def _refs_in(value: Any) -> Iterable[TaskRef]:
    if isinstance(value, TaskRef):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _refs_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _refs_in(item)


def _upstream_nodes(node: _Node) -> Iterable[_Node]:
    yield from (r._node for r in _refs_in(list(node.args)))
    yield from (r._node for r in _refs_in(node.kwargs))
    yield from (r._node for r in node.options.after)
    if node.sweep is not None:
        yield from (v._node for v in node.sweep.params.values() if isinstance(v, TaskRef))


def _reachable(roots: Iterable[TaskRef]) -> list[_Node]:
    seen: dict[int, _Node] = {}
    stack = [ref._node for ref in roots]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(_upstream_nodes(node))
    return sorted(seen.values(), key=lambda n: n.serial)


def _assign_ids(nodes: list[_Node]) -> dict[int, str]:
    ids: dict[int, str] = {}
    taken: set[str] = set()
    for node in nodes:
        if node.options.name is not None:
            if node.options.name in taken:
                raise SpecError("two tasks have this name", task=node.options.name, field="name")
            ids[id(node)] = node.options.name
            taken.add(node.options.name)
    counts: dict[str, int] = {}
    for node in nodes:
        if id(node) in ids:
            continue
        n = counts.get(node.hint, 0) + 1
        candidate = node.hint if n == 1 else f"{node.hint}-{n}"
        while candidate in taken:
            n += 1
            candidate = f"{node.hint}-{n}"
        counts[node.hint] = n
        ids[id(node)] = candidate
        taken.add(candidate)
    return ids


def _as_ref(ref: TaskRef, ids: Mapping[int, str], in_sweep: bool = False) -> Ref:
    mode = ref._mode
    if mode == "one" and ref.swept:
        mode = "each" if in_sweep else "all"
    return Ref(ids[id(ref._node)], ref._key, mode, ref._index)


def _convert(value: Any, ids: Mapping[int, str]) -> Any:
    if isinstance(value, TaskRef):
        return _as_ref(value, ids)
    if isinstance(value, list):
        return [_convert(v, ids) for v in value]
    if isinstance(value, tuple):
        return tuple(_convert(v, ids) for v in value)
    if isinstance(value, dict):
        return {k: _convert(v, ids) for k, v in value.items()}
    return value


def _freeze(node: _Node, ids: Mapping[int, str]) -> Task:
    sweep = None
    if node.sweep is not None:
        params = {k: _as_ref(v, ids, in_sweep=True) if isinstance(v, TaskRef) else v
                  for k, v in node.sweep.params.items()}
        sweep = Sweep(params, node.sweep.mode)
    opts = node.options
    return Task(
        id=ids[id(node)],
        action=node.action,
        args=_convert(node.args, ids),
        kwargs=_convert(node.kwargs, ids),
        after=tuple(ids[id(r._node)] for r in opts.after),
        resources=opts.resources,
        retries=opts.retries,
        timeout=opts.timeout,
        sweep=sweep,
    )
