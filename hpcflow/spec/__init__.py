"""Orchestrator layer, part three: workflows written in YAML, loaded into the model.

``load_workflow("wf.yaml")`` gives the same :class:`~hpcflow.model.Workflow` that the
Python API builds; every mistake in the file is one :class:`~hpcflow.errors.SpecError`
naming file, line, task and field. ``docs/yaml-reference.md`` documents the syntax; it
is generated from :mod:`hpcflow.spec.schema` by ``python -m hpcflow.spec.reference``.
"""

from hpcflow.spec.loader import MAX_INCLUDE_DEPTH, load_plan, load_workflow, load_workflow_text

__all__ = ["MAX_INCLUDE_DEPTH", "load_plan", "load_workflow", "load_workflow_text"]
