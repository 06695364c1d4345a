"""Check that a ``module:qualname`` or ``file.py:qualname`` target can be found, running nothing.

A spec is checked before anything runs, and a check that imported the user's module
would run its top-level code. ``importlib.util.find_spec("a.b")`` imports ``a`` to find
``b``, so the lookup here walks the dotted name itself: the top-level module through the
path finder (on the spec's ``python_path``, then ``sys.path``) or the built-in finders,
each further part through the parent's ``submodule_search_locations``. Nothing is
imported and no module is executed. The module's source is then read (``_source``) for
the name after the colon: a function or class it surely lacks, or a name it binds to a
plain value, is an error. A file target becomes an absolute
``/abs/path/file.py:qualname``, the form the engine's resolver loads.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pkgutil
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path

from hpcflow.spec._source import missing_name


def resolve_target(target: str, folder: Path, python_path: Sequence[str]) -> str:
    """The target as the engine will load it; ValueError (with the reason) if not found,
    or if the module's source shows that it lacks the name or binds it to a plain value."""
    where, _, qualname = target.rpartition(":")
    if where.endswith(".py") or "/" in where:
        file = (folder / where).resolve()
        if not file.is_file():
            raise ValueError(f"file '{where}' not found (looked for {file})")
        _check_name(file, qualname)
        return f"{file}:{qualname}"
    spec = _find_module(where, python_path)
    if spec is None:
        shown = ", ".join(python_path) or "(none)"
        raise ValueError(f"module '{where}' not found on python_path ({shown}) or sys.path")
    if spec.origin and spec.origin.endswith(".py"):
        _check_name(Path(spec.origin), qualname, _submodules(spec))
    return target


def _check_name(source: Path, qualname: str, submodules: frozenset[str] = frozenset()) -> None:
    problem = missing_name(source, qualname, submodules)
    if problem is not None:
        raise ValueError(problem)


def _submodules(spec: ModuleSpec) -> frozenset[str]:
    locations = spec.submodule_search_locations or ()
    return frozenset(info.name for info in pkgutil.iter_modules(list(locations)))


def _find_module(name: str, python_path: Sequence[str]) -> ModuleSpec | None:
    """The module's spec, found without importing it or its parents (a module already
    imported: its own spec, or a spec without a source when it has none)."""
    if name in sys.modules:
        return _imported(name)
    parts = name.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], [*python_path, *sys.path])
    if spec is None:
        try:
            spec = importlib.util.find_spec(parts[0])  # built-in and frozen modules
        except (ImportError, ValueError):
            spec = None
    for depth in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            return None
        child = ".".join(parts[: depth + 1])
        if child in sys.modules:
            return _imported(child)
        spec = importlib.machinery.PathFinder.find_spec(child, list(spec.submodule_search_locations))
    return spec


def _imported(name: str) -> ModuleSpec:
    found = getattr(sys.modules[name], "__spec__", None)
    return found if isinstance(found, ModuleSpec) else ModuleSpec(name, None)
