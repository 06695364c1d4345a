"""Whether a module's source defines a name, read with ``ast``: nothing is imported.

``validate`` must find a ``python:`` target that names a function or class the module
lacks, or a name bound to a plain value, before anything runs; importing the module to
look would run its top-level code. So the source is parsed and its top-level statements
are read, and the answer is only ever *missing* or *not callable* when the source makes
that certain. Anything the text cannot settle counts as present:

- a module-level ``__getattr__``, ``from x import *``, or a call of ``globals``,
  ``vars``, ``exec``, ``eval``, ``setattr`` or ``__import__`` anywhere (names can appear
  that no statement binds);
- a name bound inside ``if``/``try``/``for``/``while``/``with``/``match`` or by
  ``global`` in a function (it may or may not exist at run time);
- a name bound by ``import`` (the other module's object is not looked at);
- a package's submodule of that name;
- a dotted qualified name (``Class.method``): only its first part is checked.

A binding is *not callable* when the last top-level statement binding the name assigns
a literal: a number, string, list, tuple, set, dict or comprehension.
"""

from __future__ import annotations

import ast
import difflib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_DYNAMIC_CALLS = frozenset({"globals", "vars", "exec", "eval", "setattr", "__import__"})
_LITERALS = {ast.JoinedStr: "str", ast.List: "list", ast.Tuple: "tuple", ast.Set: "set",
             ast.Dict: "dict", ast.ListComp: "list", ast.SetComp: "set", ast.DictComp: "dict",
             ast.GeneratorExp: "generator"}
"""Expressions whose value is never callable, and the type they make."""
_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")


@dataclass(frozen=True)
class _Binding:
    node: ast.AST
    certain: bool
    """Bound by a plain top-level statement (not inside a block, not by ``global``)."""


def missing_name(source: Path, qualname: str, submodules: frozenset[str] = frozenset()) -> str | None:
    """Why ``qualname`` surely cannot be called from the module in ``source``, or None
    (found, or the source cannot tell). ``submodules``: a package's submodule names."""
    head = qualname.split(".")[0]
    try:
        stat = source.stat()
        tree = _parsed(str(source), stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError):
        return None
    except SyntaxError as err:
        return f"{source}:{err.lineno}: the module does not parse ({err.msg})"
    if head in submodules or _dynamic(tree):
        return None
    bindings = list(_bindings(tree.body, head, certain=True))
    bindings += [_Binding(node, False) for node in ast.walk(tree) if _binds_elsewhere(node, head)]
    if not bindings:
        return f"{source} has no top-level function or class '{head}'{_close(tree, head)}"
    if "." in qualname or not all(b.certain for b in bindings):
        return None
    last = bindings[-1].node
    value = getattr(last, "value", None)
    kind = type(value.value).__name__ if isinstance(value, ast.Constant) else _LITERALS.get(type(value))
    if isinstance(last, (ast.Assign, ast.AnnAssign)) and kind is not None:
        return (f"'{head}' in {source} is not a function or class: line {last.lineno} sets it "
                f"to a value of type {kind}")
    return None


@functools.lru_cache(maxsize=64)
def _parsed(path: str, mtime_ns: int, size: int) -> ast.Module:
    """A module's tree, parsed once for the many tasks of a spec that name it."""
    return ast.parse(Path(path).read_bytes(), filename=path)


def _binds_elsewhere(node: ast.AST, name: str) -> bool:
    """``global name`` in a function, or a name bound by ``except ... as`` or a ``case``
    pattern (which the statement walk leaves out)."""
    if isinstance(node, ast.Global):
        return name in node.names
    return isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name == name


def _dynamic(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "__getattr__":
            return True
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return True
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _DYNAMIC_CALLS):
            return True
    return False


def _bindings(body: list[ast.stmt], name: str, certain: bool) -> Iterator[_Binding]:
    """The statements of ``body`` that bind ``name`` in the module's namespace, in order."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if stmt.name == name:
                yield _Binding(stmt, certain)
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in stmt.names):
                yield _Binding(stmt, False)
            continue
        if _stores(stmt, name):
            yield _Binding(stmt, certain and isinstance(stmt, (ast.Assign, ast.AnnAssign)))
        yield from _bindings(_blocks_of(stmt), name, certain=False)


def _blocks_of(stmt: ast.stmt) -> list[ast.stmt]:
    """The statements nested in a compound statement's blocks (``except`` and ``case``
    bodies included)."""
    nested: list[ast.stmt] = []
    for block in _BLOCKS:
        for child in getattr(stmt, block, ()):
            nested.extend([child] if isinstance(child, ast.stmt) else child.body)
    return nested


def _stores(stmt: ast.stmt, name: str) -> bool:
    """True if the statement's own expressions (not its blocks) store ``name``."""
    for field, value in ast.iter_fields(stmt):
        if field in _BLOCKS:
            continue
        for node in _walk_expressions(value):
            if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
                return True
    return False


def _walk_expressions(value: object) -> Iterator[ast.AST]:
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, ast.AST):
            yield from ast.walk(item)


def _close(tree: ast.Module, name: str) -> str:
    defined = [n.name for n in tree.body
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    close = difflib.get_close_matches(name, defined, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
