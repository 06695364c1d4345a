"""The checked value types of the spec's schema: ids, names, paths, targets, sizes, durations.

Each type is a plain JSON type plus a validator that says, in words a user can act on,
what was expected; its JSON schema ``format`` word is listed in :data:`FORMATS`, from
which the reference's "Value types" table is generated. Unions pick their branch by the
value's Python type (:func:`one_of`), so that a wrong value gets one clear message, not
one error per branch.
"""

from __future__ import annotations

import functools
import operator
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, Tag

from hpcflow.model.resources import parse_memory, parse_time
from hpcflow.model.task import ENV_NAME_RE, TASK_ID_RE
from hpcflow.spec import refs


class FieldError(ValueError):
    """A check on a whole model that blames one of its fields (``field``, a dotted path)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


def _kind(value: Any) -> str | None:
    """The branch tag of a value in a type-discriminated union (bool is not an int)."""
    names = {bool: "<bool>", str: "<str>", int: "<int>", float: "<float>", list: "<list>",
             dict: "<dict>"}
    return names.get(type(value))


def one_of(message: str, **branches: Any) -> Any:
    """A union whose branch is chosen by the value's type (``str=...``, ``list=...``), so
    that a wrong value gets one clear ``message`` instead of one error per branch."""
    union = functools.reduce(operator.or_, [Annotated[t, Tag(f"<{k}>")] for k, t in branches.items()])
    return Annotated[union, Discriminator(_kind, custom_error_type="wrong_type",
                                          custom_error_message=message)]


def _check_id(value: str) -> str:
    if not TASK_ID_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid id: start with a letter or '_' and use only "
                         "letters, digits, '_', '.' and '-' (at most 128)")
    if value == "inputs":
        raise ValueError("'inputs' is reserved: '${inputs.name}' names a workflow input")
    return value


def _check_name(value: str) -> str:
    if not value.isidentifier():
        raise ValueError(f"{value!r} is not a valid name: use a Python identifier "
                         "(letters, digits and '_', not starting with a digit)")
    return value


def _check_path(value: str) -> str:
    if not value or "\0" in value or "\n" in value or "\r" in value:
        raise ValueError("a path must be non-empty and contain no NUL or newline")
    return value


def _check_argument(value: str) -> str:
    if "\0" in value:
        raise ValueError("a command must not contain NUL")
    return value


def _check_command(value: str) -> str:
    if not value.strip():
        raise ValueError("a command must not be empty")
    return _check_argument(value)


def _check_output_path(value: str) -> str:
    _check_path(value)
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"output path {value!r} must be relative to the task's folder, "
                         "without '..'")
    return value


def _check_target(value: str) -> str:
    where, sep, qualname = value.rpartition(":")
    names_ok = bool(sep) and all(part.isidentifier() for part in qualname.split("."))
    module_ok = all(part.isidentifier() for part in where.split("."))
    if not names_ok or not (module_ok or where.endswith(".py")):
        raise ValueError(f"{value!r}: expected 'package.module:function' or "
                         "'path/to/file.py:function' (a class or Class.method also works)")
    return _check_path(value)


def _check_env_name(value: str) -> str:
    if not ENV_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not an environment variable name: use letters, digits "
                         "and '_', not starting with a digit")
    return value


def _check_env_text(value: str) -> str:
    if "\0" in value:
        raise ValueError("an environment variable's value must not contain NUL")
    return value


def _check_memory(value: Any) -> Any:
    parse_memory(value)
    return value


def _check_duration(value: Any) -> Any:
    parse_time(value)
    return value


def _check_timeout(value: Any) -> Any:
    if parse_time(value) <= 0:
        raise ValueError("timeout must be longer than zero")
    return value


def _check_task_ref(value: str) -> str:
    if not refs.is_reference(value) or value.startswith("${inputs."):
        raise ValueError(f"{value!r}: expected a reference to a task, such as '${{task}}', "
                         "'${task.key}' or '${task[*]}'")
    return value


FORMATS = {
    "id": "a task id or workflow name: a letter or `_`, then letters, digits, `_`, `.`, `-` "
          "(at most 128 characters); `inputs` is reserved",
    "name": "a keyword argument, input or output name: a Python identifier",
    "path": "a file or folder, relative to the spec file's folder (no NUL or newline)",
    "relative path": "a path inside the task's folder: not absolute, no `..`, no NUL or newline",
    "target": "`package.module:qualname` (found on `python_path`, then `sys.path`, without "
              "importing it) or `path/to/file.py:qualname` (when the part before `:` ends in `.py` "
              "or holds a `/`; relative to the spec file)",
    "reference": "a whole-string reference to a task, `${task}`, `${task.key}`, `${task[*]}` or "
                 "`${task[*].key}` (see References)",
    "variable": "an environment variable name: letters, digits and `_`, not starting with a "
                "digit",
    "size": "memory as for Slurm: `500M`, `4G`, `1.5GiB`, or an integer number of megabytes",
    "duration": "`MM:SS`, `HH:MM:SS`, `D-HH:MM:SS`, `90s`, `5m`, `2h`, `1d`, or a number of "
                "seconds; as in Slurm the first field is unbounded (`48:00:00`), the others 0-59 "
                "(hours after days 0-23); a bare numeric string such as `\"30\"` is refused as "
                "ambiguous",
}
"""The words the reference uses for checked value types, and what each accepts."""


def _format(name: str) -> Any:
    """A JSON schema ``format`` word for a checked value type (see :data:`FORMATS`)."""
    assert name in FORMATS, name
    return Field(json_schema_extra={"format": name})


TaskId = Annotated[str, AfterValidator(_check_id),
                   _format("id"), Field(json_schema_extra={"pattern": TASK_ID_RE.pattern})]
Name = Annotated[str, AfterValidator(_check_name), _format("name"),
               Field(json_schema_extra={"pattern": r"^[A-Za-z_]\w*$"})]
PathText = Annotated[str, AfterValidator(_check_path), _format("path")]
CommandText = Annotated[str, AfterValidator(_check_command)]
ArgvText = Annotated[str, AfterValidator(_check_argument)]
OutputPath = Annotated[str, AfterValidator(_check_output_path), _format("relative path")]
Target = Annotated[str, AfterValidator(_check_target), _format("target")]
TaskRefText = Annotated[str, AfterValidator(_check_task_ref), _format("reference")]
Memory = Annotated[one_of("memory must be a size such as '500M' or '4G', or a number of megabytes",
                           str=str, int=Annotated[int, Field(ge=0)]),
                   BeforeValidator(_check_memory), _format("size")]
Duration = Annotated[one_of("expected a duration such as '01:30:00', '90s', '5m', '2h' or a number "
                             "of seconds", str=str, int=int, float=float),
                     BeforeValidator(_check_duration), _format("duration")]
Timeout = Annotated[Duration, AfterValidator(_check_timeout)]
ShellValue = one_of("shell must be a string or a list of strings", str=CommandText,
                    list=Annotated[list[ArgvText], Field(min_length=1)])
EnvName = Annotated[str, AfterValidator(_check_env_name), _format("variable"),
                  Field(json_schema_extra={"pattern": ENV_NAME_RE.pattern})]
EnvValue = one_of("an environment variable's value must be text or a number",
                  str=Annotated[str, AfterValidator(_check_env_text)], int=int, float=float)
ArgsValue = one_of("args must be a mapping (keyword arguments) or a list (positional arguments)",
                    dict=dict[Name, Any], list=list[Any])
