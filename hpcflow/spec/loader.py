"""Load a YAML workflow spec into the model, or refuse it with one precise SpecError.

The pipeline per file is: read (bounded size) -> compose with the SafeLoader and
convert within a node budget (:mod:`._yaml`) -> validate against the pydantic schema
(:mod:`.schema`) -> build model objects (:mod:`._build`), loading included files
through this module so that one budget, one include stack and one cache serve the whole
load. The model's own checks (unknown references, cycles) and, in :func:`load_plan`,
the planner's (a plain reference to a swept task, sweep sizes) raise errors that name
a task and a model field; they are given their line in the file here. Nothing from the
spec is imported or run.

An included file is loaded once per load however often it is included, so a file that
includes another twice, repeatedly, costs linear time; an include that leads back to a
file on the current include path is a cycle, shown as ``a.yaml -> b.yaml -> a.yaml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from hpcflow.errors import Location, SpecError
from hpcflow.model.workflow import Workflow
from hpcflow.plan.flatten import flatten
from hpcflow.plan.plan import Plan
from hpcflow.spec._build import build_workflow
from hpcflow.spec._errors import error_at, from_validation_error, relocate
from hpcflow.spec._yaml import MAX_FILE_BYTES, Budget, Document, parse_document, read_text
from hpcflow.spec._yaml import Path as DataPath
from hpcflow.spec.schema import WorkflowSpec

MAX_INCLUDE_DEPTH = 16
"""Deepest chain of ``workflow:`` includes."""


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """The :class:`Workflow` written in the spec file ``path``; :class:`SpecError` if wrong."""
    return _Load().file(Path(path), str(path))


def load_workflow_text(text: str, path: str | os.PathLike[str] = "<string>") -> Workflow:
    """As :func:`load_workflow`, for ``text`` as if it were the file ``path`` (relative
    paths in it resolve against that file's folder; the file need not exist)."""
    return _Load().text(text, Path(path), str(path))


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Load the spec file and flatten it, with the planner's errors located in the files."""
    load = _Load()
    workflow = load.file(Path(path), str(path))
    return load.flatten(workflow)


@dataclass
class _Load:
    """One load: its node budget, include stack, cache of loaded files and their documents."""

    budget: Budget = field(default_factory=Budget)
    stack: list[tuple[Path, str]] = field(default_factory=list)
    cache: dict[Path, Workflow] = field(default_factory=dict)
    docs: dict[str, Document] = field(default_factory=dict)

    def file(self, path: Path, shown: str) -> Workflow:
        return self.text(_read(path, shown), path, shown)

    def text(self, text: str, path: Path, shown: str) -> Workflow:
        real = path.absolute().resolve()
        doc = parse_document(text, shown, self.budget)
        self.docs.setdefault(shown, doc)
        if not isinstance(doc.data, dict):
            raise SpecError("the top level of a spec must be a mapping (name: ..., tasks: ...)",
                            location=doc.location())
        try:
            spec = WorkflowSpec.model_validate(doc.data)
        except ValidationError as exc:
            raise from_validation_error(exc, doc) from None
        self.stack.append((real, shown))
        try:
            workflow = build_workflow(spec, doc, real.parent, self.include)
        finally:
            self.stack.pop()
        self.cache[real] = workflow
        return workflow

    def include(self, target: str, doc: Document, at: DataPath) -> Workflow:
        """The workflow of file ``target``, named at ``at`` of ``doc`` (the including file)."""
        parent_real, parent_shown = self.stack[-1]
        real = (parent_real.parent / target).resolve()
        shown = os.path.normpath(os.path.join(os.path.dirname(parent_shown), target))
        if real in self.cache:
            return self.cache[real]
        reals = [r for r, _ in self.stack]
        if real in reals:
            chain = [s for _, s in self.stack[reals.index(real):]]
            raise error_at(doc, at, f"include cycle: {' -> '.join([*chain, shown])}")
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise error_at(doc, at, f"includes are nested more than {MAX_INCLUDE_DEPTH} deep")
        if not real.is_file():
            raise error_at(doc, at, f"included file '{target}' not found (looked for {real})")
        try:
            return self.file(real, shown)
        except SpecError as err:
            err.message += f" (included from {doc.location(at)})"
            err.args = (str(err),)
            raise

    def flatten(self, workflow: Workflow) -> Plan:
        try:
            return flatten(workflow)
        except SpecError as err:
            doc = self.docs.get(err.location.file or "") or self.docs[workflow.location.file or ""]
            raise relocate(err, doc) from None


def _read(path: Path, shown: str) -> str:
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise SpecError(f"cannot read the spec file: {err.strerror or err}",
                        location=Location(shown)) from None
    return read_text(raw, shown)
