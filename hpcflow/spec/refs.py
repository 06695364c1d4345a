"""Reference strings: how a spec says "the output of that task" or "this workflow's input".

A reference is a whole string value, written in ``args``, ``inputs``, workflow
``outputs`` or as a sweep value, also nested inside lists and mappings:

- ``${task}``: the output of ``task`` (which must not be swept);
- ``${task.key}``: one item of it (a dict key, or a shell task's declared output);
- ``${task[*]}``: the list of every instance's output, in sweep order (a gather);
- ``${task[*].key}``: the same item of every instance's output, as a list;
- ``${inputs.name}``: an input of this workflow (see the top-level ``inputs``).

As a sweep value, ``${task}``, ``${task[*]}`` and ``${task.key}`` all mean *one member
per instance of* ``task``. The reference must be the whole value: ``"run-${seed}"`` is an
error, not a template. ``$${`` writes a literal ``${``. Task ids may contain dots, so in
``${a.b.c}`` the longest prefix that names a task of the file is the task, the rest the
key. Where only constants make sense (``method.init``, the defaults of the top-level
``inputs``, the lists of a sweep) a reference is an error.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Hashable
from typing import Any

from hpcflow.model.task import TASK_ID_RE, Param, Ref

_TOKEN_RE = re.compile(r"\$\$\{|\$\{")
_WHOLE_RE = re.compile(r"\$\{([^{}]*)\}")
_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_FORMS = "'${task}', '${task.key}', '${task[*]}', '${task[*].key}' or '${inputs.name}'"


class ValueProblem(ValueError):
    """A value in the spec is wrong; ``path`` says where, relative to the converted value."""

    def __init__(self, path: tuple[Hashable, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def is_reference(text: str) -> bool:
    """Whether ``text`` is written as a reference (its syntax is checked by :func:`parse`)."""
    return _WHOLE_RE.fullmatch(text) is not None


def parse(text: str, task_ids: Collection[str]) -> Ref | Param:
    """The model object for a whole reference string ``text`` (see the module docstring)."""
    match = _WHOLE_RE.fullmatch(text)
    if match is None:
        raise ValueProblem((), f"{text!r} is not a reference; expected {_FORMS}")
    body = match.group(1).strip()
    if body.startswith("inputs."):
        name = body[len("inputs."):]
        if not name.isidentifier():
            raise ValueProblem((), f"{text!r}: a workflow input name is a Python identifier")
        return Param(name)
    task, star, rest = body.partition("[*]")
    if star:
        key = _key(text, rest) if rest else None
        return Ref(_task_id(text, task), key, "all")
    task, key = _split_task(body, task_ids)
    return Ref(_task_id(text, task), _key(text, "." + key) if key else None)


def _split_task(body: str, task_ids: Collection[str]) -> tuple[str, str | None]:
    """The longest dotted prefix of ``body`` that names a task; else the first part."""
    parts = body.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in task_ids:
            return candidate, ".".join(parts[end:]) or None
    return parts[0], ".".join(parts[1:]) or None


def _task_id(text: str, task: str) -> str:
    if not TASK_ID_RE.fullmatch(task):
        raise ValueProblem((), f"{text!r} is not a valid reference; expected {_FORMS}")
    return task


def _key(text: str, rest: str) -> str:
    if not rest.startswith(".") or not _KEY_RE.fullmatch(rest[1:]):
        raise ValueProblem((), f"{text!r} is not a valid reference; expected {_FORMS}")
    return rest[1:]


def unescape(text: str) -> str:
    """``text`` with ``$${`` turned into ``${``; a bare ``${`` inside other text is an error."""
    if "${" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "${":
            raise ValueProblem((), f"{text!r}: a reference must be the whole value "
                                   "(write '$${' for a literal '${')")
        return "${"

    return _TOKEN_RE.sub(replace, text)


def convert(value: Any, task_ids: Collection[str] | None) -> Any:
    """``value`` with every reference string turned into :class:`Ref`/:class:`Param`.

    ``task_ids`` is the set of ids a reference may name, or None where references are
    not allowed (constants). Raises :class:`ValueProblem` with the path of the bad item.
    """
    if isinstance(value, str):
        if is_reference(value):
            if task_ids is None:
                raise ValueProblem((), f"{value!r}: a reference is not allowed here, only "
                                       "constants (write '$${' for a literal '${')")
            return parse(value, task_ids)
        return unescape(value)
    if isinstance(value, list):
        return [_convert_at(item, task_ids, i) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: _convert_at(item, task_ids, key) for key, item in value.items()}
    return value


def _convert_at(value: Any, task_ids: Collection[str] | None, step: Hashable) -> Any:
    try:
        return convert(value, task_ids)
    except ValueProblem as problem:
        raise ValueProblem((step, *problem.path), problem.message) from None
