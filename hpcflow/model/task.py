"""The workflow model: tasks, what they run, and how their inputs refer to other tasks.

One model serves the Python API and the YAML spec: both end as a :class:`Workflow` of
:class:`Task` objects whose argument values may contain :class:`Ref` (another task's
output) and :class:`Param` (an input of the enclosing workflow). The planner flattens
nesting and sweeps of this model into integer-indexed arrays.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hpcflow.errors import Location
from hpcflow.model.resources import Resources

if TYPE_CHECKING:
    from hpcflow.model.workflow import Workflow

TASK_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
"""Task ids name folders and appear in shell commands and batch scripts: keep them plain."""

RefMode = Literal["one", "all", "each"]

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Environment = tuple[tuple[str, str], ...]
"""A task's own environment variables, ``(name, value)`` sorted by name. Values may use
``$NAME`` / ``${NAME}`` of the worker's environment (expanded where the task runs)."""


def environment(values: Mapping[str, Any] | None) -> Environment:
    """``values`` as an :data:`Environment`; ValueError names a bad name or value.
    Numbers are written as text (``OMP_NUM_THREADS: 4``)."""
    pairs = []
    for name, value in (values or {}).items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise ValueError(f"environment variable name {name!r} is not a plain name "
                             "(letters, digits, _; not starting with a digit)")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"environment variable {name} must be text or a number, "
                             f"not {type(value).__name__}")
        pairs.append((name, str(value)))
    return tuple(sorted(pairs))


@dataclass(frozen=True, slots=True, eq=False)
class Ref:
    """The output of task ``task`` (an id in the same workflow).

    ``key`` picks an item of the output (a dict key, or a shell task's named output
    file). ``mode`` says how a swept upstream task is seen: ``one`` (the task is not
    swept), ``all`` (a list of every instance's output, in sweep order: a gather) or
    ``each`` (only valid as a sweep value: one member per upstream instance; ``index``
    optionally picks, for member k, upstream instance ``index[k]``).
    """

    task: str
    key: str | None = None
    mode: RefMode = "one"
    index: Sequence[int] | None = None

    def __repr__(self) -> str:
        suffix = {"one": "", "all": "[*]", "each": "[each]"}[self.mode]
        key = f".{self.key}" if self.key is not None else ""
        return f"${{{self.task}{suffix}{key}}}"


@dataclass(frozen=True, slots=True)
class Param:
    """An input of the enclosing workflow, filled when it is used as a nested task."""

    name: str

    def __repr__(self) -> str:
        return f"${{inputs.{self.name}}}"


@dataclass(frozen=True, slots=True)
class PythonCall:
    """Call ``target``: a callable object, or ``"module:qualname"`` imported on the worker.
    Every action carries the task's own ``env`` (set while it runs)."""

    target: Callable[..., Any] | str
    env: Environment = ()

    @property
    def label(self) -> str:
        if isinstance(self.target, str):
            return self.target
        module = getattr(self.target, "__module__", "?")
        return f"{module}:{getattr(self.target, '__qualname__', repr(self.target))}"


@dataclass(frozen=True, slots=True)
class MethodCall:
    """Construct ``cls(*init_args, **init_kwargs)`` on the worker, then call ``method``."""

    cls: type | str
    method: str
    init_args: tuple[Any, ...] = ()
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)
    env: Environment = ()

    @property
    def label(self) -> str:
        name = self.cls if isinstance(self.cls, str) else f"{self.cls.__module__}:{self.cls.__qualname__}"
        return f"{name}.{self.method}"


@dataclass(frozen=True, slots=True)
class ShellCommand:
    """A program. ``command`` is a string run by ``bash -c`` or an argv list run directly.

    ``{name}`` placeholders are filled from the task's keyword arguments and from
    ``outputs`` (declared files, paths relative to the task's folder in the run
    directory); every substituted value is shell-quoted. The task's output is a dict
    of output name -> absolute path, or its stdout text when ``stdout`` is set.
    """

    command: str | tuple[str, ...]
    outputs: Mapping[str, str] = field(default_factory=dict)
    stdout: bool = False
    env: Environment = ()

    @property
    def label(self) -> str:
        text = self.command if isinstance(self.command, str) else " ".join(self.command)
        return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class SubWorkflow:
    """A whole workflow used as one task; its inputs come from the task's kwargs."""

    workflow: Workflow

    @property
    def label(self) -> str:
        return f"workflow {self.workflow.name}"


Action = PythonCall | MethodCall | ShellCommand | SubWorkflow


@dataclass(frozen=True, slots=True)
class Sweep:
    """Run one task per combination of ``params`` (``product``) or per position (``zip``).

    Values are sequences (lists, ranges, numpy arrays: never copied) or a ``Ref`` with
    mode ``each`` (one member per instance of a swept upstream task).
    """

    params: Mapping[str, Sequence[Any] | Ref]
    mode: Literal["product", "zip"] = "product"


@dataclass(eq=False)
class Task:
    """One node of the workflow before flattening (one group of instances if swept).

    ``args``/``kwargs`` hold constants, :class:`Ref` and :class:`Param` values, also
    nested in lists and dicts. ``after`` lists order-only dependencies (ids).
    ``timeout`` (seconds) is the hard limit that kills the task; ``resources.time``
    only an estimate for planning.
    """

    id: str
    action: Action
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    retries: int = 0
    timeout: float | None = None
    sweep: Sweep | None = None
    location: Location = field(default_factory=Location)

    def refs(self) -> list[tuple[str, Ref]]:
        """Every reference in the task's inputs, with the field it sits in."""
        found: list[tuple[str, Ref]] = []
        for i, value in enumerate(self.args):
            _collect_refs(value, f"args[{i}]", found)
        for name, value in self.kwargs.items():
            _collect_refs(value, f"args.{name}", found)
        if self.sweep is not None:
            for name, value in self.sweep.params.items():
                if isinstance(value, Ref):
                    found.append((f"sweep.{name}", value))
        return found

    def upstream(self) -> set[str]:
        """Ids this task depends on: data references and order-only ``after``."""
        return {ref.task for _, ref in self.refs()} | set(self.after)


def _collect_refs(value: Any, path: str, found: list[tuple[str, Ref]]) -> None:
    if isinstance(value, Ref):
        found.append((path, value))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _collect_refs(item, f"{path}[{i}]", found)
    elif isinstance(value, dict):
        for key, item in value.items():
            _collect_refs(item, f"{path}.{key}", found)


def sweep_size(sweep: Sweep, upstream_sizes: Mapping[str, int]) -> int:
    """Number of members; ``upstream_sizes`` gives the instance count of each-ref tasks."""
    lengths = [
        (len(v.index) if v.index is not None else upstream_sizes[v.task])
        if isinstance(v, Ref)
        else len(v)
        for v in sweep.params.values()
    ]
    if sweep.mode == "zip":
        if len(set(lengths)) > 1:
            raise ValueError(f"zip sweep needs equal lengths, got {lengths}")
        return lengths[0] if lengths else 1
    return math.prod(lengths)
