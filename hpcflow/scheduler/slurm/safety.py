"""What may reach a batch script: an allow-list per directive, quoting for the body.

An ``#SBATCH`` line is read twice. ``sbatch`` splits what follows ``#SBATCH`` into
options at whitespace (so a partition ``a --wrap=...`` would smuggle in an option) and
reads directives until the first command line; ``bash`` treats the line as a comment
until a newline ends it (so a value holding a newline plus ``touch x`` would run).
Escaping cannot be trusted in both readers at once, so a directive value is never
escaped: it must match the strict pattern of what Slurm accepts for that directive,
else :class:`UnsafeValueError` names the field and the first character refused.

Values in the script's body (the interpreter, the spec path, the run folder, set-up
words, ``env`` values) are never matched against patterns but ``shlex.quote``\\d, so
bash sees each as one literal word: ``$(...)``, backticks, ``;`` and spaces do nothing.
Where a word must hold a value known only in the job (the Dask scheduler's address, the
batch host's node name), it says so with :class:`Var` (written ``"${name}"``, the name
checked) or :class:`Join` (literal parts quoted, variables double-quoted, one word).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from hpcflow.errors import Location
from hpcflow.scheduler.slurm.errors import UnsafeValueError

_NAME = r"[A-Za-z0-9_.-]+"
_PATH_CHARS = r"A-Za-z0-9_./+@,:=~-"

DIRECTIVE_PATTERNS: dict[str, str] = {
    "job-name": r"[A-Za-z0-9_.+-]{1,128}",
    "nodes": r"[1-9][0-9]{0,5}",
    "ntasks-per-node": r"[1-9][0-9]{0,4}",
    "cpus-per-task": r"[1-9][0-9]{0,4}",
    "mem": r"[0-9]{1,9}[KMGT]?",
    "mem-per-cpu": r"[0-9]{1,9}[KMGT]?",
    "mem-per-gpu": r"[0-9]{1,9}[KMGT]?",
    "gpus": r"[0-9]{1,4}",
    "gpus-per-node": r"[0-9]{1,4}",
    "gres": r"gpu(:[A-Za-z0-9_.-]+)?:[0-9]{1,4}",
    "time": r"([0-9]{1,4}-)?[0-9]{1,5}(:[0-9]{2}){0,2}",
    "partition": rf"{_NAME}(,{_NAME})*",
    "account": _NAME,
    "qos": _NAME,
    # Slurm feature expressions use & | [ ] * : , — harmless inside a comment line and
    # to sbatch's option splitter; whitespace, quotes, '#', '$' and newlines are not.
    "constraint": r"[A-Za-z0-9_.,:&|\[\]*-]+",
    "output": rf"/[{_PATH_CHARS}]*%j[{_PATH_CHARS}]*",
    "error": rf"/[{_PATH_CHARS}]*%j[{_PATH_CHARS}]*",
    "signal": r"B:USR1@[0-9]{1,5}",
}
"""The full-match pattern of each directive's value (``--name=value``)."""

PATH_PATTERN = rf"/[{_PATH_CHARS}]*"
"""An absolute path that may be written into a directive (the run folder)."""

_PATTERNS = {name: re.compile(pattern) for name, pattern in DIRECTIVE_PATTERNS.items()}
_PATH = re.compile(PATH_PATTERN)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWN = {"\n": "a newline", "\r": "a carriage return", " ": "a space", "\t": "a tab"}


def check_directive(name: str, value: object, *, field: str | None = None,
                    location: Location | None = None) -> str:
    """``value`` as text if it is allowed for directive ``--name``, else
    :class:`UnsafeValueError` naming ``field`` (default: the directive)."""
    pattern = _PATTERNS.get(name)
    if pattern is None:
        raise UnsafeValueError(field or name, value, f"--{name} is not a directive hpcflow writes",
                               location)
    return _match(pattern, str(value), field or name, DIRECTIVE_PATTERNS[name], location)


def check_path(value: str, field: str, location: Location | None = None) -> str:
    """An absolute path usable inside a directive (``--output``), else UnsafeValueError."""
    return _match(_PATH, value, field, PATH_PATTERN, location)


def check_env_name(name: str, field: str, location: Location | None = None) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise UnsafeValueError(field, name, "an environment variable name is letters, digits "
                               "and '_', not starting with a digit", location)
    return name


def _match(pattern: re.Pattern[str], text: str, field: str, shown: str,
           location: Location | None) -> str:
    if pattern.fullmatch(text):
        return text
    bad = next((c for c in text if not re.fullmatch(r"[A-Za-z0-9_.,:/+@=~%&|\[\]*-]", c)), None)
    if bad is not None:
        why = f"it contains {_SHOWN.get(bad, repr(bad))}, which is never allowed there"
    elif not text:
        why = "it is empty"
    else:
        why = f"it does not match {shown}"
    raise UnsafeValueError(field, text, why, location)


def split_command(line: str, field: str, location: Location | None = None) -> tuple[str, ...]:
    """A set-up line as words, split as a shell would split them (quotes honoured).

    The words are quoted again when written (:func:`quote_words`), so a line is a plain
    command — ``module load gcc/12`` — never shell code: ``$(...)``, ``;`` or pipes in it
    become literal arguments. Put real shell logic in a file and ``source`` it."""
    if "\n" in line or "\r" in line:
        raise UnsafeValueError(field, line, "a set-up line is one command: no newlines", location)
    try:
        words = tuple(shlex.split(line, comments=False, posix=True))
    except ValueError as exc:
        raise UnsafeValueError(field, line, f"cannot split it into words ({exc})", location) from None
    if not words:
        raise UnsafeValueError(field, line, "it is empty", location)
    return words


@dataclass(frozen=True)
class Var:
    """A shell variable's value as one word of a command: written ``"${name}"``."""

    name: str


@dataclass(frozen=True)
class Join:
    """One word made of literal text and variables, e.g. ``--nodelist=`` and
    ``Var("SLURMD_NODENAME")``: ``--nodelist="${SLURMD_NODENAME}"``."""

    parts: tuple[str | Var | Join, ...]


Word = str | int | Var | Join
"""A word of a command in the script's body."""


def quote_word(word: Word) -> str:
    """``word`` as bash must read it: literal text ``shlex.quote``\\d, a variable
    double-quoted (its name checked), the parts of a :class:`Join` side by side."""
    if isinstance(word, Var):
        return f'"${{{check_env_name(word.name, "variable")}}}"'
    if isinstance(word, Join):
        return "".join(shlex.quote(part) if isinstance(part, str) else quote_word(part)
                       for part in word.parts if part != "") or "''"
    return shlex.quote(str(word))


def quote_words(words: Iterable[Word]) -> str:
    """One line of shell: each word quoted, so bash reads it back unchanged."""
    return " ".join(quote_word(w) for w in words)
