"""The YAML spec's schema: pydantic models that are its one source of truth.

A workflow file is a mapping with a ``name`` and a list of ``tasks``. Each task does
exactly one thing: call a Python function (``python``), call a method of an object it
constructs (``method``), run a program (``shell``) or run another workflow file as one
task (``workflow``). Tasks pass data by *reference strings* (``${task}``, see below);
a task can be *swept* over parameters, one instance per combination.

The file is read with PyYAML's SafeLoader: plain mappings, lists and scalars. Anchors,
aliases and ``<<`` merge keys work; duplicate keys, keys that YAML reads as something
other than a string (``on``, ``yes``, ``1``) and tags such as ``!!python/object`` are
errors. So are unknown keys (a typo such as ``resourcse`` never passes silently) and
values of the wrong type (``cores: "4"``, ``cores: true``). Every error names the file,
the line, the task and the field, and nothing has run.

A ``python`` target (and a ``method``'s ``class``) is checked without importing
anything: the module or file must exist, and its source, read as text, must not lack
the name at its top level nor bind it to a plain value (a number, string, list, dict).
What the text cannot settle passes and shows when the task runs: names made by a
module-level ``__getattr__`` or ``from x import *``, names bound only inside ``if`` or
``try`` blocks, what an imported name is, compiled modules (see the troubleshooting
guide).

Implementation notes (not in the reference): validation, the error paths of
:mod:`hpcflow.spec.loader` and the reference document ``docs/yaml-reference.md``
(``python -m hpcflow.spec.reference``) all come from these classes: their docstrings
and field descriptions are the documentation.

Checks that need no other file live here (one action per task, placeholders of a shell
command, sweep shapes); checks that need the file's folder or the other tasks (module
lookup, includes, references) live in the loader and the model.
"""

from __future__ import annotations

import math
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpcflow.model.resources import LIMITS
from hpcflow.plan.flatten import MAX_TASKS
from hpcflow.spec.values import (
    ArgsValue,
    Duration,
    EnvName,
    EnvValue,
    FieldError,
    Memory,
    Name,
    OutputPath,
    PathText,
    ShellValue,
    Target,
    TaskId,
    TaskRefText,
    Timeout,
    one_of,
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- resources and defaults --------------------------------------------------------------

class ResourcesSpec(_Spec):
    """What one instance of a task needs. Keys left out take the file's ``defaults``, then
    the built-in default. A task with ``ranks`` > 1 is itself an MPI program: each rank
    gets ``cores`` cores and ``gpus`` GPUs."""

    cores: int | None = Field(None, ge=1, le=LIMITS["cores"],
                              description="CPU cores per rank. Built-in default 1.")
    gpus: int | None = Field(None, ge=0, le=LIMITS["gpus"],
                             description="GPUs per rank. Built-in default 0.")
    memory: Memory | None = Field(
        None, description="Memory per instance. Built-in default: unspecified.")
    time: Duration | None = Field(
        None, description="Estimated wall time per instance, for planning and for fitting tasks "
        "into the time left. Not a limit: see `timeout`.")
    ranks: int | None = Field(None, ge=1, le=LIMITS["ranks"], description="MPI ranks of a "
                              "parallel task. Built-in default 1.")


class DefaultsSpec(_Spec):
    """Defaults for every task of *this* file (not of the files it includes). A task's own
    value wins; ``resources`` are merged key by key."""

    resources: ResourcesSpec | None = Field(None, description="Default resources.")
    retries: int | None = Field(None, ge=0, description="Default number of retries.")
    timeout: Timeout | None = Field(None, description="Default hard time limit.")
    env: dict[EnvName, EnvValue] | None = Field(
        None, description="Default environment variables, merged name by name (a task's own "
        "value wins).")


# --- actions -----------------------------------------------------------------------------

class MethodSpec(_Spec):
    """Construct an object on the worker, then call one of its methods with the task's
    ``args``: ``class(*init)`` or ``class(**init)``, then ``.call(...)``."""

    class_: Target = Field(alias="class", description="The class, as `package.module:Class` or "
                           "`path/to/file.py:Class` (relative to this file).")
    init: ArgsValue | None = Field(None, description="Constructor arguments: a mapping (keyword) "
                                   "or a list (positional). Constants only, no references.")
    call: Name = Field(description="Name of the method to call.")


class RangeSpec(_Spec):
    """A Python ``range`` of integers, kept compact (never expanded into a list)."""

    range: list[int] = Field(min_length=1, max_length=3,
                             description="`[stop]`, `[start, stop]` or `[start, stop, step]`.")

    @model_validator(mode="after")
    def _nonzero_step(self) -> RangeSpec:
        if len(self.range) == 3 and self.range[2] == 0:
            raise FieldError("range", "the step of a range must not be 0")
        if len(self.to_range()) == 0:
            raise FieldError("range", f"range {self.range} has no values")
        return self

    def to_range(self) -> range:
        return range(*self.range)


SweepValue = one_of(
    "a sweep value must be a list of values, {range: [start, stop, step]} or a reference "
    "'${task}' to a swept task", list=Annotated[list[Any], Field(min_length=1)],
    dict=RangeSpec, str=TaskRefText)


def _literal_length(value: Any) -> int | None:
    if isinstance(value, list):
        return len(value)
    return len(value.to_range()) if isinstance(value, RangeSpec) else None


class SweepSpec(_Spec):
    """One instance per combination (``product``) or per position (``zip``) of the
    parameters, each passed to the task as a keyword argument. A parameter's value is a
    list, a range, or a reference to a swept task (one member per instance of it)."""

    product: dict[Name, SweepValue] | None = Field(
        None, min_length=1, description="Every combination of the values, the last "
        "parameter varying fastest.")
    zip: dict[Name, SweepValue] | None = Field(
        None, min_length=1, description="Values taken together by position; all lists must "
        "have the same length.")

    @model_validator(mode="after")
    def _one_mode(self) -> SweepSpec:
        if (self.product is None) == (self.zip is None):
            raise FieldError("zip" if self.zip is not None else None,
                             "a sweep has exactly one of 'product' or 'zip'")
        lengths = [n for v in self.params.values() if (n := _literal_length(v)) is not None]
        if self.zip is not None and len(set(lengths)) > 1:
            raise FieldError("zip", f"the parameters of a zip sweep need equal lengths, got {lengths}")
        size = math.prod(lengths) if self.product is not None else max(lengths, default=1)
        if size > MAX_TASKS:
            raise FieldError(self.mode, f"the sweep has {size:,} members, more than {MAX_TASKS:,}")
        return self

    @property
    def mode(self) -> Literal["product", "zip"]:
        return "product" if self.product is not None else "zip"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.product if self.product is not None else self.zip or {})


# --- tasks -------------------------------------------------------------------------------

ACTIONS = ("python", "method", "shell", "workflow")


class TaskSpec(_Spec):
    """One task: an ``id`` and exactly one of ``python``, ``method``, ``shell`` or
    ``workflow``, with its arguments, resources and limits. Swept, it stands for many
    instances."""

    id: TaskId = Field(description="Unique id within the file; names the task's folder and "
                       "is used in references.")
    python: Target | None = Field(None, description="Function to call: `package.module:function` "
                                  "(found on `python_path`, then `sys.path`) or "
                                  "`path/to/file.py:function` (relative to this file).")
    method: MethodSpec | None = Field(None, description="Method of an object built on the worker.")
    shell: ShellValue | None = Field(
        None, description="A program: a string run by `bash -c`, or a list of argv strings run "
        "without a shell. `{name}` placeholders are filled from `args`, sweep parameters and "
        "`outputs`, each value shell-quoted; write `{{` and `}}` for literal braces.")
    workflow: PathText | None = Field(None, description="Another spec file (relative to this "
                                      "file), run as one task; its outputs are this task's.")
    args: ArgsValue | None = Field(None, description="Arguments: a mapping (keyword arguments) or "
                                   "a list (positional); values may hold references. Keyword "
                                   "arguments only for `shell`.")
    inputs: dict[Name, Any] | None = Field(None, description="For `workflow` tasks: values of the "
                                           "nested workflow's inputs (references allowed).")
    outputs: dict[Name, OutputPath] | None = Field(
        None, description="For `shell` tasks: declared output files by name, relative to the "
        "task's folder (templates: `{name}` placeholders from `args`). They must exist after the "
        "task runs; the task's value is a mapping of name to absolute path.")
    stdout: bool | None = Field(None, description="For `shell` tasks: `true` makes the task's "
                                "value its standard output text (then no `outputs`).")
    sweep: SweepSpec | None = Field(None, description="Run one instance per parameter combination.")
    resources: ResourcesSpec | None = Field(None, description="Needs of one instance.")
    retries: int | None = Field(None, ge=0, description="Times to run a failed instance again. "
                                "Built-in default 0.")
    timeout: Timeout | None = Field(None, description="Hard limit per attempt: the task is killed "
                                    "after it (a Python task with `ranks` above 1 is not). "
                                    "Built-in default: none.")
    after: list[TaskId] = Field(default_factory=list, description="Ids of tasks that must finish "
                                "first, though no data passes (order only).")
    env: dict[EnvName, EnvValue] | None = Field(
        None, description="Environment variables set while the task runs, over the worker's own: "
        "for a shell task its program's environment, for a Python task `os.environ` during the "
        "call. `$NAME` and `${NAME}` in a value expand from the worker's environment; numbers "
        "are written as text. Part of the task's definition (changing it reruns the task on "
        "resume).")

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        given = [name for name in ACTIONS if getattr(self, name) is not None]
        if not given:
            raise FieldError(None, "a task needs one of 'python', 'method', 'shell' or 'workflow'")
        if len(given) > 1:
            raise FieldError(given[1], f"a task does exactly one thing, but this one has "
                             f"{' and '.join(repr(g) for g in given)}")
        _check_keys_for(self, given[0])
        if self.sweep is not None:
            both = sorted(set(self.sweep.params) & set(self.args or {}))
            if both and isinstance(self.args, dict):
                raise FieldError(f"sweep.{self.sweep.mode}.{both[0]}",
                                 f"'{both[0]}' is both swept and given in args")
        if self.shell is not None:
            _check_placeholders(self)
        return self


_ONLY_FOR = {"inputs": "workflow", "outputs": "shell", "stdout": "shell"}
_NOT_FOR_WORKFLOW = ("args", "sweep", "resources", "retries", "timeout", "env")


def _check_keys_for(task: TaskSpec, action: str) -> None:
    for key, owner in _ONLY_FOR.items():
        if getattr(task, key) is not None and action != owner:
            raise FieldError(key, f"'{key}' is only for '{owner}' tasks")
    if action == "workflow":
        for key in _NOT_FOR_WORKFLOW:
            if getattr(task, key) not in (None, []):
                hint = "give its inputs in 'inputs'" if key == "args" else "set it on the tasks inside it"
                raise FieldError(key, f"a 'workflow' task takes no '{key}': {hint}")
    if action == "shell" and isinstance(task.args, list):
        raise FieldError("args", "a shell task takes keyword arguments only (a mapping), which "
                         "fill its {placeholders}")
    if task.stdout and task.outputs:
        raise FieldError("stdout", "a task whose value is its stdout cannot declare 'outputs'")


def placeholders(template: str) -> list[str]:
    """The ``{name}`` placeholders of a command or path template, in order."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"{err} in {template!r} (write '{{{{' or '}}}}' for a literal brace)") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} in {template!r}: write {{name}} with a "
                             "Python identifier, or '{{' and '}}' for literal braces")
        names.append(name)
    return names


def _check_placeholders(task: TaskSpec) -> None:
    values = set(task.args or {}) | set(task.sweep.params if task.sweep else {})
    for out in task.outputs or {}:
        if out in values:
            raise FieldError(f"outputs.{out}", f"'{out}' is both an output and an argument: "
                             "placeholder {" + out + "} would be ambiguous")
    parts = [task.shell] if isinstance(task.shell, str) else list(task.shell or [])
    for i, part in enumerate(parts):
        field = "shell" if isinstance(task.shell, str) else f"shell[{i}]"
        for name in _placeholders_at(part, field):
            if name not in values and name not in (task.outputs or {}):
                raise FieldError(field, f"placeholder {{{name}}} is not given: add '{name}' to "
                                 "args, to the sweep or to outputs")
    for out, template in (task.outputs or {}).items():
        for name in _placeholders_at(template, f"outputs.{out}"):
            if name not in values:
                raise FieldError(f"outputs.{out}", f"placeholder {{{name}}} is not given: add "
                                 f"'{name}' to args or to the sweep")


def _placeholders_at(template: str, field: str) -> list[str]:
    try:
        return placeholders(template)
    except ValueError as err:
        raise FieldError(field, str(err)) from None


# --- the file ----------------------------------------------------------------------------

class WorkflowSpec(_Spec):
    """A workflow file. Relative paths in it (``python_path``, ``workflow`` includes,
    ``file.py:function`` targets) are relative to the folder of the file itself, so that
    it runs from any working directory."""

    name: TaskId = Field(description="The workflow's name (same rules as a task id).")
    description: str | None = Field(None, description="Free text, for people.")
    inputs: dict[Name, Any] = Field(default_factory=dict, description="Inputs of this workflow, "
                                    "used when another file includes it as a `workflow` task: "
                                    "name to default value, `null` for a required input. Tasks "
                                    "read them as `${inputs.name}`.")
    python_path: list[PathText] = Field(default_factory=list, description="Folders (relative to "
                                        "this file) searched for `module:function` targets, before "
                                        "`sys.path`. This file's own folder is always searched.")
    defaults: DefaultsSpec | None = Field(None, description="Defaults for every task in this file.")
    tasks: list[TaskSpec] = Field(min_length=1, description="The tasks, in any order; ids unique.")
    outputs: dict[Name, TaskRefText] = Field(default_factory=dict, description="Outputs of this "
                                             "workflow by name: references to its tasks.")
