"""Turn one validated spec file into model objects (:class:`Task`, :class:`Workflow`).

The schema has already checked each value's shape; what is left needs context: the
file's folder (relative paths, module lookup), the other task ids (references), the
file's ``defaults`` (merged into each task, resources key by key) and included files
(loaded through the ``include`` callback, which owns cycle and depth checks). Every
error names the data path it came from, so it carries the right line.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcflow.errors import SpecError
from hpcflow.model.resources import Resources, parse_time
from hpcflow.model.task import (
    Action,
    MethodCall,
    Param,
    PythonCall,
    Ref,
    ShellCommand,
    SubWorkflow,
    Sweep,
    Task,
    environment,
)
from hpcflow.model.workflow import REQUIRED, Workflow
from hpcflow.spec import refs
from hpcflow.spec._errors import error_at, relocate
from hpcflow.spec._targets import resolve_target
from hpcflow.spec._yaml import Document
from hpcflow.spec._yaml import Path as DataPath
from hpcflow.spec.schema import DefaultsSpec, RangeSpec, TaskSpec, WorkflowSpec

Include = Callable[[str, Document, DataPath], Workflow]
"""Loads the spec file named at a data path of a document (relative to its folder)."""


@dataclass(frozen=True)
class _File:
    doc: Document
    folder: Path
    python_path: list[str]
    task_ids: frozenset[str]
    defaults: DefaultsSpec
    include: Include

    def error(self, path: DataPath, message: str) -> SpecError:
        return error_at(self.doc, path, message)

    def convert(self, value: Any, path: DataPath, task_ids: Collection[str] | None) -> Any:
        try:
            return refs.convert(value, task_ids)
        except refs.ValueProblem as problem:
            raise self.error((*path, *problem.path), problem.message) from None


def build_workflow(spec: WorkflowSpec, doc: Document, folder: Path, include: Include) -> Workflow:
    """The model :class:`Workflow` of one file (its includes loaded through ``include``)."""
    file = _File(doc, folder, _python_path(spec, doc, folder), frozenset(t.id for t in spec.tasks),
                 spec.defaults or DefaultsSpec(), include)
    inputs = {name: REQUIRED if value is None else file.convert(value, ("inputs", name), None)
              for name, value in spec.inputs.items()}
    tasks = [_task(file, spec_task, ("tasks", i)) for i, spec_task in enumerate(spec.tasks)]
    outputs = {name: file.convert(text, ("outputs", name), file.task_ids)
               for name, text in spec.outputs.items()}
    try:
        return Workflow.from_tasks(spec.name, tasks, inputs, outputs, doc.location(), file.python_path)
    except SpecError as err:
        raise relocate(err, doc) from None


def _python_path(spec: WorkflowSpec, doc: Document, folder: Path) -> list[str]:
    found = {str(folder.resolve()): None}
    for i, entry in enumerate(spec.python_path):
        path = (folder / entry).resolve()
        if not path.is_dir():
            raise error_at(doc, ("python_path", i), f"folder '{entry}' not found (looked for {path})")
        found[str(path)] = None
    return list(found)


def _task(file: _File, spec: TaskSpec, path: DataPath) -> Task:
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if isinstance(spec.args, list):
        args = tuple(file.convert(spec.args, (*path, "args"), file.task_ids))
    elif spec.args is not None:
        kwargs = file.convert(spec.args, (*path, "args"), file.task_ids)
    if spec.inputs is not None:
        kwargs = file.convert(spec.inputs, (*path, "inputs"), file.task_ids)
    nested = spec.workflow is not None
    defaults = DefaultsSpec() if nested else file.defaults
    timeout = spec.timeout if spec.timeout is not None else defaults.timeout
    return Task(
        id=spec.id,
        action=_action(file, spec, path, {**(defaults.env or {}), **(spec.env or {})}),
        args=args,
        kwargs=kwargs,
        after=tuple(spec.after),
        resources=_resources(file, spec, defaults, path),
        retries=spec.retries if spec.retries is not None else (defaults.retries or 0),
        timeout=parse_time(timeout) if timeout is not None else None,
        sweep=_sweep(file, spec, path),
        location=file.doc.location(path),
    )


def _action(file: _File, spec: TaskSpec, path: DataPath, env: dict[str, Any]) -> Action:
    if spec.python is not None:
        return PythonCall(_target(file, spec.python, (*path, "python")), environment(env))
    if spec.method is not None:
        init = file.convert(spec.method.init, (*path, "method", "init"), None)
        return MethodCall(
            cls=_target(file, spec.method.class_, (*path, "method", "class")),
            method=spec.method.call,
            init_args=tuple(init) if isinstance(init, list) else (),
            init_kwargs=init if isinstance(init, dict) else {},
            env=environment(env),
        )
    if spec.shell is not None:
        command = spec.shell if isinstance(spec.shell, str) else tuple(spec.shell)
        return ShellCommand(command, dict(spec.outputs or {}), bool(spec.stdout), environment(env))
    assert spec.workflow is not None
    sub = file.include(spec.workflow, file.doc, (*path, "workflow"))
    _check_nested_inputs(file, spec, sub, path)
    return SubWorkflow(sub)


def _target(file: _File, target: str, path: DataPath) -> str:
    try:
        return resolve_target(target, file.folder, file.python_path)
    except ValueError as err:
        raise file.error(path, str(err)) from None


def _check_nested_inputs(file: _File, spec: TaskSpec, sub: Workflow, path: DataPath) -> None:
    given = spec.inputs or {}
    for name in given:
        if name not in sub.inputs:
            known = ", ".join(sub.inputs) or "none"
            raise file.error((*path, "inputs", name),
                             f"workflow '{sub.name}' has no input '{name}' (its inputs: {known})")
    missing = [name for name, value in sub.inputs.items() if value is REQUIRED and name not in given]
    if missing:
        where: tuple[Hashable, ...] = (*path, "inputs" if spec.inputs is not None else "workflow")
        raise file.error(where, f"workflow '{sub.name}' needs input(s) {', '.join(missing)}: "
                         "give them in 'inputs'")


def _resources(file: _File, spec: TaskSpec, defaults: DefaultsSpec, path: DataPath) -> Resources:
    merged: dict[str, Any] = {}
    for layer in (defaults.resources, spec.resources):
        if layer is not None:
            merged.update(layer.model_dump(exclude_none=True))
    try:
        return Resources.build(**merged)
    except ValueError as err:
        raise file.error((*path, "resources"), str(err)) from None


def _sweep(file: _File, spec: TaskSpec, path: DataPath) -> Sweep | None:
    if spec.sweep is None:
        return None
    params: dict[str, Any] = {}
    for name, value in spec.sweep.params.items():
        where = (*path, "sweep", spec.sweep.mode, name)
        if isinstance(value, RangeSpec):
            params[name] = value.to_range()
        elif isinstance(value, str):
            params[name] = _each(file.convert(value, where, file.task_ids))
        else:
            params[name] = file.convert(value, where, None)
    return Sweep(params, spec.sweep.mode)


def _each(ref: Ref | Param) -> Ref:
    assert isinstance(ref, Ref), "the schema lets only task references through"
    return Ref(ref.task, ref.key, "each")
