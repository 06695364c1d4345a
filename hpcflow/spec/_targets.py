"""Check that a ``module:qualname`` or ``file.py:qualname`` target can be found, running nothing.

A spec is checked before anything runs, and a check that imported the user's module
would run its top-level code. ``importlib.util.find_spec("a.b")`` imports ``a`` to find
``b``, so the lookup here walks the dotted name itself: the top-level module through the
path finder (on the spec's ``python_path``, then ``sys.path``) or the built-in finders,
each further part through the parent's ``submodule_search_locations``. Nothing is
imported and no module is executed. A file target becomes an absolute
``/abs/path/file.py:qualname``, the form the engine's resolver loads.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path


def resolve_target(target: str, folder: Path, python_path: Sequence[str]) -> str:
    """The target as the engine will load it; ValueError (with the reason) if not found."""
    where, _, qualname = target.rpartition(":")
    if where.endswith(".py") or "/" in where:
        file = (folder / where).resolve()
        if not file.is_file():
            raise ValueError(f"file '{where}' not found (looked for {file})")
        return f"{file}:{qualname}"
    if not _module_exists(where, python_path):
        shown = ", ".join(python_path) or "(none)"
        raise ValueError(f"module '{where}' not found on python_path ({shown}) or sys.path")
    return target


def _module_exists(name: str, python_path: Sequence[str]) -> bool:
    if name in sys.modules:
        return True
    parts = name.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], [*python_path, *sys.path])
    if spec is None:
        try:
            spec = importlib.util.find_spec(parts[0])  # built-in and frozen modules
        except (ImportError, ValueError):
            spec = None
    for depth in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            return False
        child = ".".join(parts[: depth + 1])
        if child in sys.modules:
            return True
        spec = importlib.machinery.PathFinder.find_spec(child, list(spec.submodule_search_locations))
    return spec is not None
