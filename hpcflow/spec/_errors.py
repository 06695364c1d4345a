"""Every problem in a spec becomes one :class:`SpecError` naming file, line, task and field.

Problems come from three places, all mapped onto a *data path* such as
``("tasks", 2, "resources", "memory")``, whose line the :class:`Document` knows:

* pydantic: an error's ``loc`` follows the data, except for union branch tags (``<list>``)
  and ``[key]`` markers, which are skipped; a :class:`FieldError` raised by a model
  validator adds its own field to the path;
* the loader's own checks, which know their path;
* the model and the planner, whose errors name a task and a model field (``args.x``,
  ``sweep.alpha``): :func:`relocate` finds the task in the file and the field's line.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Hashable
from typing import Any

from pydantic import ValidationError

from hpcflow.errors import SpecError
from hpcflow.spec._yaml import Document, Path, format_path, shown_id
from hpcflow.spec.schema import WorkflowSpec
from hpcflow.spec.values import FieldError

_STEP_RE = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def parse_field(field: str) -> Path:
    """The inverse of :func:`format_path` (keys containing dots are split)."""
    return tuple(int(index) if index else key for key, index in _STEP_RE.findall(field))


def error_at(doc: Document, path: Path, message: str) -> SpecError:
    """A SpecError for the value at ``path`` of ``doc``."""
    task, field = _task_and_field(doc.data, path)
    return SpecError(message, task=task, field=field, location=doc.location(path))


def _task_and_field(data: Any, path: Path) -> tuple[str | None, str | None]:
    if len(path) >= 2 and path[0] == "tasks" and isinstance(path[1], int):
        entry = _get(data, path[:2])
        task_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(task_id, str):
            return shown_id(task_id), format_path(path[2:]) or None
    return None, format_path(path) or None


def _get(data: Any, path: Path) -> Any:
    for part in path:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_dict or in_list):
            return None
        data = data[part]
    return data


# --- pydantic ----------------------------------------------------------------------------

def from_validation_error(exc: ValidationError, doc: Document) -> SpecError:
    """The first problem (by line) of a failed validation, as a SpecError."""
    problems = []
    for error in exc.errors(include_url=False):
        path = _data_path(doc.data, error)
        problems.append((doc.line_of(path) or 0, path, error))
    _, path, error = min(problems, key=lambda p: p[0])
    message = _message(error, path, doc.data)
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    return error_at(doc, path, message)


def _data_path(data: Any, error: Any) -> Path:
    path: list[Hashable] = []
    for part in error["loc"]:
        if isinstance(part, str) and (part.startswith("<") or part == "[key]"):
            continue
        path.append(part)
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError) and cause.field:
        path.extend(parse_field(cause.field))
    return tuple(path)


def _message(error: Any, path: Path, data: Any) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(str(path[-1]), path[:-1])
    if kind == "missing":
        return f"'{path[-1]}' is required but missing"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {_show(value)}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']:,}, got {_show(value)}"
    simple = {"int_type": "a whole number", "string_type": "a string", "bool_type": "true or false",
              "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
              "float_type": "a number"}
    if kind in simple:
        return f"must be {simple[kind]}, got {_show(value)}"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind in ("too_short", "too_long"):
        bound = "at least" if kind == "too_short" else "at most"
        limit = ctx.get("min_length", ctx.get("max_length"))
        return f"must have {bound} {limit} item(s), got {ctx.get('actual_length')}"
    return f"{error['msg']}, got {_show(value)}"


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key(key: str, parent: Path) -> str:
    allowed = _allowed_keys(parent)
    message = f"unknown key '{key}'"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean '{close[0]}'?)"
    if allowed:
        message += f"; expected one of: {', '.join(allowed)}"
    return message


@functools.cache
def _schema() -> dict[str, Any]:
    return WorkflowSpec.model_json_schema()


def _allowed_keys(path: Path) -> list[str]:
    """The keys the schema allows in the mapping at ``path``."""
    root = _schema()
    nodes = _branches(root, root)
    for part in path:
        nodes = [child for node in nodes for child in _branches(_child(node, part), root)]
    return [key for node in nodes for key in node.get("properties", {})]


def _child(node: dict[str, Any], part: Hashable) -> Any:
    if isinstance(part, int):
        return node.get("items")
    if part in node.get("properties", {}):
        return node["properties"][part]
    patterns = list(node.get("patternProperties", {}).values())
    return patterns[0] if patterns else node.get("additionalProperties")


def _branches(node: Any, root: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives a schema node allows, with ``$ref`` followed and unions opened."""
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        return _branches(root["$defs"][node["$ref"].rsplit("/", 1)[-1]], root)
    choices = node.get("anyOf", []) + node.get("oneOf", [])
    if choices:
        return [branch for choice in choices for branch in _branches(choice, root)]
    return [node]


# --- model and planner -------------------------------------------------------------------

def relocate(err: SpecError, doc: Document) -> SpecError:
    """Give a model or planner error about ``doc`` the line of its task and field there."""
    base: Path = ()
    if err.task is not None:
        index = _task_index(doc, err.task, err.location.line)
        if index is None:
            return err
        base = ("tasks", index)
    path = (*base, *_spec_field(parse_field(err.field or ""), _get(doc.data, base)))
    field = _task_and_field(doc.data, path)[1]
    err.location = doc.location(path)
    err.field = field if err.field is not None else None
    err.args = (str(err),)
    return err


def _task_index(doc: Document, task_id: str, line: int | None) -> int | None:
    tasks = doc.data.get("tasks") if isinstance(doc.data, dict) else None
    found = [i for i, t in enumerate(tasks or []) if isinstance(t, dict) and t.get("id") == task_id]
    at_line = [i for i in found if doc.lines.get(("tasks", i)) == line]
    return (at_line or found or [None])[0]


def _spec_field(field: Path, task: Any) -> Path:
    """A model field of a task (``args.x``, ``sweep.alpha``) as the path written in YAML."""
    if not field or not isinstance(task, dict):
        return field
    if field[0] == "args" and "workflow" in task:
        return ("inputs", *field[1:])
    if field[0] == "sweep" and len(field) > 1 and isinstance(task.get("sweep"), dict):
        mode = "zip" if "zip" in task["sweep"] else "product"
        return ("sweep", mode, *field[1:])
    return field
