"""Find the workflow a command names: a YAML spec, or ``file.py:name`` in Python.

``file.py:name`` imports the file (not as ``__main__``) and takes ``name``: a
:class:`Workflow`, or a function of no arguments returning one. Without ``:name`` the
file must define exactly one top-level Workflow (one not nested in another).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hpcflow.errors import SpecError
from hpcflow.model.workflow import Workflow
from hpcflow.plan.flatten import flatten
from hpcflow.plan.plan import Plan


def load_plan(target: str) -> Plan:
    """The flattened plan of ``target``; a YAML spec's planner errors name file and line."""
    if Path(target.partition(":")[0] if ".py:" in target else target).suffix == ".py":
        return flatten(load(target))
    from hpcflow.spec import load_plan as load_spec_plan

    path = Path(target)
    if not path.exists():
        raise SpecError(f"no such file: {path}")
    return load_spec_plan(path)


def load(target: str) -> Workflow:
    path_text, _, attr = target.partition(":") if ".py:" in target else (target, "", "")
    path = Path(path_text)
    if not path.exists():
        raise SpecError(f"no such file: {path}")
    if path.suffix == ".py":
        return _load_python(path, attr)
    from hpcflow.spec import load_workflow

    return load_workflow(path)


def _load_python(path: Path, attr: str) -> Workflow:
    name = f"hpcflow_workflow_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise SpecError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec.loader.exec_module(module)
    if attr:
        if not hasattr(module, attr):
            raise SpecError(f"{path} defines no '{attr}'")
        found = getattr(module, attr)
        found = found() if callable(found) and not isinstance(found, Workflow) else found
        if not isinstance(found, Workflow):
            raise SpecError(f"{path}:{attr} is not a Workflow (got {type(found).__name__})")
        return _with_path(found, folder)
    workflows = [v for v in vars(module).values() if isinstance(v, Workflow)]
    roots = [w for w in workflows if not any(_nests(other, w) for other in workflows)]
    if len(roots) != 1:
        raise SpecError(f"{path} defines {len(roots)} top-level workflows: name one as "
                        f"{path}:NAME")
    return _with_path(roots[0], folder)


def _nests(outer: Workflow, inner: Workflow) -> bool:
    """True if ``inner`` is used as a task somewhere inside ``outer``."""
    for task in outer.tasks.values():
        sub = getattr(task.action, "workflow", None)
        if sub is inner or (sub is not None and _nests(sub, inner)):
            return True
    return False


def _with_path(workflow: Workflow, folder: str) -> Workflow:
    if folder not in workflow.python_path:
        workflow.python_path.append(folder)
    return workflow
