"""A workflow: named tasks, its inputs (for use as a nested task) and its outputs.

The constructor checks what can be checked without flattening: ids are well formed and
unique, every reference names a task of this workflow or one of its inputs, sweeps are
well formed, and the graph has no cycle (reported with its path).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcflow.errors import CycleError, Location, SpecError
from hpcflow.model.task import TASK_ID_RE, Param, Ref, Task

REQUIRED = object()
"""Default of a workflow input that must be given when the workflow is used."""


@dataclass(eq=False)
class Workflow:
    name: str
    tasks: dict[str, Task]
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Ref] = field(default_factory=dict)
    location: Location = field(default_factory=Location)
    python_path: list[str] = field(default_factory=list)
    """Absolute folders put on ``sys.path`` where tasks run, so that ``"module:qualname"``
    targets resolve relative to the spec file that named them."""

    def __post_init__(self) -> None:
        if not TASK_ID_RE.fullmatch(self.name):
            raise SpecError(
                f"workflow name {self.name!r} must start with a letter or '_' and use only "
                "letters, digits, '_', '.', '-' (at most 128)",
                field="name",
                location=self.location,
            )
        for task in self.tasks.values():
            self._check_task(task)
        for name, ref in self.outputs.items():
            if ref.task not in self.tasks:
                raise SpecError(
                    f"output refers to unknown task '{ref.task}'",
                    field=f"outputs.{name}",
                    location=self.location,
                )
        check_acyclic(self.tasks, self.location)

    @classmethod
    def from_tasks(
        cls,
        name: str,
        tasks: Iterable[Task],
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Ref] | None = None,
        location: Location | None = None,
        python_path: list[str] | None = None,
    ) -> Workflow:
        table: dict[str, Task] = {}
        for task in tasks:
            if task.id in table:
                raise SpecError("duplicate task id", task=task.id, field="id", location=task.location)
            table[task.id] = task
        return cls(name, table, dict(inputs or {}), dict(outputs or {}), location or Location(),
                   list(python_path or []))

    def __len__(self) -> int:
        return len(self.tasks)

    def _check_task(self, task: Task) -> None:
        where = {"task": task.id, "location": task.location}
        if not TASK_ID_RE.fullmatch(task.id):
            raise SpecError(
                "task id must start with a letter or '_' and use only letters, digits, "
                "'_', '.', '-' (at most 128)",
                field="id",
                **where,
            )
        for path, ref in task.refs():
            if ref.task not in self.tasks:
                raise SpecError(f"refers to unknown task '{ref.task}'", field=path, **where)
            if ref.mode == "each" and not path.startswith("sweep."):
                raise SpecError(
                    "an each-reference is only allowed as a sweep value", field=path, **where
                )
        for dep in task.after:
            if dep not in self.tasks:
                raise SpecError(f"'after' names unknown task '{dep}'", field="after", **where)
        for path, param in _params_of(task):
            if param.name not in self.inputs:
                raise SpecError(
                    f"refers to unknown workflow input '{param.name}'", field=path, **where
                )
        if task.sweep is not None and not task.sweep.params:
            raise SpecError("a sweep needs at least one parameter", field="sweep", **where)
        if task.retries < 0:
            raise SpecError("retries must be 0 or more", field="retries", **where)
        if task.timeout is not None and task.timeout <= 0:
            raise SpecError("timeout must be positive", field="timeout", **where)


def _params_of(task: Task) -> list[tuple[str, Param]]:
    found: list[tuple[str, Param]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Param):
            found.append((path, value))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}")

    for i, value in enumerate(task.args):
        walk(value, f"args[{i}]")
    for name, value in task.kwargs.items():
        walk(value, f"args.{name}")
    return found


def check_acyclic(tasks: Mapping[str, Task], location: Location | None = None) -> None:
    """Raise :class:`CycleError` with the cycle's path if the tasks are not a DAG."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in tasks:
        if state.get(root):
            continue
        path: list[str] = [root]
        stack = [iter(sorted(tasks[root].upstream()))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise CycleError(cycle, location=tasks[nxt].location or location)
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(tasks[nxt].upstream())))
